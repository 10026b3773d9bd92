//! The `bunker` binary: the server (`bunker server`) and the Vault-style CLI client.

mod config;
mod server;

fn main() -> std::process::ExitCode {
    bunker_cli::run(std::env::args_os().collect(), server::run)
}
