//! Vault's boolean flags: `-init`, `-init=true` and `-init=false` (also `1`/`0`, `yes`/`no`,
//! `on`/`off`) all parse, as Go's `flag` package parses them.
//!
//! A boolean flag is declared as a plain `bool` field (`#[arg(long)] init: bool`, clap's
//! `SetTrue`), or `Option<bool>` where unset means "leave it as it is" (`-renewable`), and every
//! parse goes through [`parse`], which turns each such flag into one that takes an optional
//! `=value` (never a separate word: `-init false` is the flag and a positional argument, as in
//! Go). One rule in one place instead of the same seven attribute lines on every flag.

use std::ffi::OsString;

use clap::builder::BoolishValueParser;
use clap::{Arg, ArgAction, Command, CommandFactory, FromArgMatches};

/// Parses `args` (with `argv[0]`) into `T`, boolean flags taking Vault's forms.
pub(crate) fn parse<T, I, S>(args: I) -> Result<T, clap::Error>
where
    T: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let mut matches = vault_style(T::command()).try_get_matches_from(args)?;
    T::from_arg_matches_mut(&mut matches)
}

/// `command` and all its subcommands with every `SetTrue` flag made Vault-style.
fn vault_style(command: Command) -> Command {
    command.mut_args(boolean_flag).mut_subcommands(vault_style)
}

fn boolean_flag(arg: Arg) -> Arg {
    let flag = matches!(arg.get_action(), ArgAction::SetTrue);
    // `Option<bool>`: one value, a boolean.
    let tri_state = matches!(arg.get_action(), ArgAction::Set)
        && arg.get_value_parser().type_id() == std::any::TypeId::of::<bool>()
        && arg.get_num_args().is_none();
    if !flag && !tri_state {
        return arg;
    }
    let arg = arg
        .action(ArgAction::Set)
        .num_args(0..=1)
        .require_equals(true)
        .default_missing_value("true")
        .value_parser(BoolishValueParser::new());
    if flag {
        arg.default_value("false")
    } else {
        arg
    }
}

#[cfg(test)]
mod tests {
    use clap::{Parser, Subcommand};

    use super::parse;

    #[derive(Parser, Debug)]
    struct Top {
        #[arg(long)]
        top: bool,
        #[arg(long, short = 'f')]
        force: bool,
        #[arg(long)]
        renewable: Option<bool>,
        #[arg(long)]
        name: Option<String>,
        #[command(subcommand)]
        sub: Option<Sub>,
    }

    #[derive(Subcommand, Debug)]
    enum Sub {
        Run {
            #[arg(long)]
            init: bool,
            rest: Vec<String>,
        },
    }

    fn top(args: &[&str]) -> Result<Top, clap::Error> {
        parse::<Top, _, _>(std::iter::once("t").chain(args.iter().copied()))
    }

    fn init(args: &[&str]) -> (bool, Vec<String>) {
        let mut full = vec!["run"];
        full.extend(args);
        match top(&full).expect("parses").sub {
            Some(Sub::Run { init, rest }) => (init, rest),
            None => panic!("no subcommand"),
        }
    }

    #[test]
    fn a_boolean_flag_takes_vaults_forms() {
        assert!(!top(&[]).expect("parses").top, "absent is false");
        assert!(top(&["--top"]).expect("parses").top);
        for (value, expected) in [("true", true), ("false", false), ("1", true), ("0", false)] {
            let flag = format!("--top={value}");
            assert_eq!(top(&[&flag]).expect("parses").top, expected, "{flag}");
        }
        assert!(top(&["--top=maybe"]).is_err());
        assert!(
            top(&["-f"]).expect("parses").force,
            "a short form still works"
        );
        assert!(!top(&["--force=false"]).expect("parses").force);
    }

    #[test]
    fn a_tri_state_flag_is_unset_until_given() {
        assert_eq!(top(&[]).expect("parses").renewable, None);
        assert_eq!(top(&["--renewable"]).expect("parses").renewable, Some(true));
        let off = top(&["--renewable=no"]).expect("parses");
        assert_eq!(off.renewable, Some(false));
        // Other options keep their own forms.
        let named = top(&["--name", "x"]).expect("parses");
        assert_eq!(named.name.as_deref(), Some("x"));
    }

    #[test]
    fn subcommands_get_the_same_forms_and_a_value_is_never_a_separate_word() {
        assert_eq!(init(&["--init=false"]), (false, vec![]));
        assert_eq!(init(&["--init", "false"]), (true, vec!["false".to_owned()]));
    }
}
