//! Client settings: global flags first, then `VAULT_*` environment variables, then defaults.
//!
//! Resolved by hand rather than with clap's `env` support so that an empty variable counts as
//! unset (`VAULT_FORMAT= bunker status` works, as with `vault`).

use std::path::PathBuf;

use clap::ValueEnum;

use crate::error::CliError;
use crate::input::duration_flag;
use crate::output::Format;
use crate::{GlobalArgs, DEFAULT_ADDRESS};

/// Where and how commands talk to the server, and how they print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub address: String,
    pub format: Format,
    pub ca_cert: Option<PathBuf>,
    pub skip_verify: bool,
    pub wrap_ttl: Option<String>,
}

/// An environment variable, `None` when unset, empty or not UTF-8.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

impl Settings {
    /// Combines the flags with the environment (`env` returns a variable's value, or `None`).
    pub(crate) fn resolve(
        flags: GlobalArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CliError> {
        let invalid = |name: &str, value: &str, why: &str| {
            CliError::Usage(format!("Invalid {name}={value:?}: {why}"))
        };
        let format = match (flags.format, env("VAULT_FORMAT")) {
            (Some(format), _) => format,
            (None, Some(value)) => Format::from_str(value.trim(), true)
                .map_err(|_| invalid("VAULT_FORMAT", &value, "use table or json"))?,
            (None, None) => Format::Table,
        };
        let skip_verify = match (flags.tls_skip_verify, env("VAULT_SKIP_VERIFY")) {
            (Some(skip), _) => skip,
            (None, Some(value)) => parse_bool(&value)
                .ok_or_else(|| invalid("VAULT_SKIP_VERIFY", &value, "use true or false"))?,
            (None, None) => false,
        };
        let wrap_ttl = match (flags.wrap_ttl, env("VAULT_WRAP_TTL")) {
            (Some(ttl), _) => Some(ttl),
            (None, Some(value)) => {
                Some(duration_flag(&value).map_err(|why| invalid("VAULT_WRAP_TTL", &value, &why))?)
            }
            (None, None) => None,
        };
        Ok(Settings {
            address: flags
                .address
                .or_else(|| env("VAULT_ADDR"))
                .unwrap_or_else(|| DEFAULT_ADDRESS.to_string()),
            format,
            ca_cert: flags
                .ca_cert
                .or_else(|| env("VAULT_CACERT").map(PathBuf::from)),
            skip_verify,
            wrap_ttl,
        })
    }
}

/// Go's `strconv.ParseBool` spellings.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn defaults_without_flags_or_env() -> Result<(), CliError> {
        let settings = Settings::resolve(GlobalArgs::default(), env_of(&[]))?;
        assert_eq!(
            settings,
            Settings {
                address: "https://127.0.0.1:8200".into(),
                format: Format::Table,
                ca_cert: None,
                skip_verify: false,
                wrap_ttl: None,
            }
        );
        Ok(())
    }

    #[test]
    fn environment_fills_in_missing_flags() -> Result<(), CliError> {
        let env = env_of(&[
            ("VAULT_ADDR", "http://127.0.0.1:8200"),
            ("VAULT_FORMAT", "JSON"),
            ("VAULT_CACERT", "/etc/ca.pem"),
            ("VAULT_SKIP_VERIFY", "1"),
            ("VAULT_WRAP_TTL", "300"),
        ]);
        let settings = Settings::resolve(GlobalArgs::default(), env)?;
        assert_eq!(settings.address, "http://127.0.0.1:8200");
        assert_eq!(settings.format, Format::Json);
        assert_eq!(settings.ca_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert!(settings.skip_verify);
        assert_eq!(settings.wrap_ttl.as_deref(), Some("300s"));
        Ok(())
    }

    #[test]
    fn flags_win_over_environment() -> Result<(), CliError> {
        let flags = GlobalArgs {
            address: Some("http://flag:1".into()),
            format: Some(Format::Table),
            tls_skip_verify: Some(false),
            ..GlobalArgs::default()
        };
        let env = env_of(&[
            ("VAULT_ADDR", "http://env:2"),
            ("VAULT_FORMAT", "json"),
            ("VAULT_SKIP_VERIFY", "true"),
        ]);
        let settings = Settings::resolve(flags, env)?;
        assert_eq!(settings.address, "http://flag:1");
        assert_eq!(settings.format, Format::Table);
        assert!(!settings.skip_verify);
        Ok(())
    }

    #[test]
    fn bad_environment_values_are_usage_errors() {
        for pair in [
            &[("VAULT_FORMAT", "yaml")][..],
            &[("VAULT_SKIP_VERIFY", "maybe")][..],
            &[("VAULT_WRAP_TTL", "soon")][..],
        ] {
            let pairs: &'static [(&'static str, &'static str)] = pair;
            let result = Settings::resolve(GlobalArgs::default(), env_of(pairs));
            assert!(matches!(result, Err(CliError::Usage(_))), "{pair:?}");
        }
    }
}
