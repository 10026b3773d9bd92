//! `bunker auth ...`: enable, disable, tune, list and move auth methods (`sys/auth`,
//! `sys/remount`), with the same arguments and code as `bunker secrets ...`.

use clap::Subcommand;

use super::secrets::AUTH_METHODS;
use super::secrets::{
    disable, enable, list, move_mount, tune, EnableArgs, ListArgs, MoveArgs, PathArgs, TuneArgs,
};
use super::{CmdResult, Ctx};

#[derive(Subcommand, Debug)]
pub(crate) enum AuthCommand {
    /// Enable an auth method (`userpass`, `approle`) at `-path` (default: its type).
    Enable(EnableArgs),
    /// Disable the auth method at a path; the tokens it issued are revoked.
    Disable(PathArgs),
    /// List enabled auth methods.
    List(ListArgs),
    /// Change an auth method's settings (TTLs, description).
    Tune(TuneArgs),
    /// Move an auth method to a new path, with its users or roles (`sys/remount`); the tokens
    /// it issued are revoked.
    Move(MoveArgs),
}

pub(crate) fn run(ctx: &Ctx, command: AuthCommand) -> CmdResult {
    match command {
        AuthCommand::Enable(args) => enable(ctx, &args, &AUTH_METHODS),
        AuthCommand::Disable(args) => disable(ctx, &args, &AUTH_METHODS),
        AuthCommand::List(args) => list(ctx, &args, &AUTH_METHODS),
        AuthCommand::Tune(args) => tune(ctx, &args, &AUTH_METHODS),
        AuthCommand::Move(args) => move_mount(ctx, &args, &AUTH_METHODS),
    }
}
