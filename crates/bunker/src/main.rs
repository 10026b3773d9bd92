//! The `bunker` binary: the server (`bunker server`) and the Vault-style CLI client.

mod server;

/// mimalloc instead of glibc's malloc: a server that allocates per request from many threads
/// kept hundreds of MiB of freed memory resident under glibc (see bench/README.md, memory), and
/// allocation was the largest user-space cost in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bunker_cli::run(std::env::args_os().collect(), server::run)
}
