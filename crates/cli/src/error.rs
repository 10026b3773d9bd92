//! Errors a command can end with, and the exit code each one maps to.
//!
//! Exit codes follow the `vault` CLI convention:
//!
//! * `0`: success.
//! * `1`: a local error: bad flags or arguments (including argument parsing errors reported by
//!   clap), a file or stdin that could not be read, a token helper that could not be written.
//! * `2`: a remote error: the server answered with an error status, could not be reached, or
//!   the requested value does not exist ("No value found at ..."). Failing to build the HTTP
//!   client (bad CA file, bad address) is also reported with `2`, as `vault` does.
//!
//! `bunker status` is the one exception: it exits `2` when the server is sealed and `1` on any
//! error (see `commands::status`).

use std::io;

use crate::client::ClientError;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for local errors (usage, files, stdin).
pub const EXIT_LOCAL: u8 = 1;
/// Exit code for remote errors (API errors, unreachable server, missing values).
pub const EXIT_REMOTE: u8 = 2;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Wrong flags or arguments, found after clap accepted them.
    #[error("{0}")]
    Usage(String),
    /// Reading or writing a local file or stream failed.
    #[error("Error {doing}: {source}")]
    Io {
        /// What was being done, e.g. "reading file data.json".
        doing: String,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// Local input was malformed (bad JSON on stdin, an OTP that does not decode, ...).
    #[error("{0}")]
    Invalid(String),
    /// The HTTP client could not be configured (bad CA bundle, ...).
    #[error("Error initializing client: {0}")]
    ClientSetup(String),
    /// A request to the server failed.
    #[error("Error {doing}: {source}")]
    Remote {
        /// What was being done, e.g. "writing data to secret/foo".
        doing: String,
        /// The request failure.
        source: ClientError,
    },
    /// A read or list found nothing; the message says what ("No value found at secret/foo").
    #[error("{0}")]
    Missing(String),
}

impl CliError {
    /// The process exit code for this error (see the module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Io { .. } | CliError::Invalid(_) => EXIT_LOCAL,
            CliError::ClientSetup(_) | CliError::Remote { .. } | CliError::Missing(_) => {
                EXIT_REMOTE
            }
        }
    }

    /// `No value found at PATH`, as `vault read` says on a 404.
    pub fn not_found(path: &str) -> Self {
        CliError::Missing(format!("No value found at {path}"))
    }

    /// An I/O error with what was being done.
    pub fn io(doing: impl Into<String>, source: io::Error) -> Self {
        CliError::Io {
            doing: doing.into(),
            source,
        }
    }
}

/// Attaches "what was being done" to a failed request.
pub trait Doing<T> {
    /// Wraps the error as [`CliError::Remote`], e.g. `.doing("reading secret/foo")`.
    fn doing(self, doing: impl Into<String>) -> Result<T, CliError>;
}

impl<T> Doing<T> for Result<T, ClientError> {
    fn doing(self, doing: impl Into<String>) -> Result<T, CliError> {
        self.map_err(|source| CliError::Remote {
            doing: doing.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_renders_like_vault() {
        let err = CliError::Remote {
            doing: "writing data to secret/foo".into(),
            source: ClientError::Api {
                method: "PUT".into(),
                url: "http://127.0.0.1:8200/v1/secret/foo".into(),
                status: 403,
                errors: vec!["permission denied".into()],
            },
        };
        assert_eq!(
            err.to_string(),
            "Error writing data to secret/foo: Error making API request.\n\n\
             URL: PUT http://127.0.0.1:8200/v1/secret/foo\n\
             Code: 403. Errors:\n\n* permission denied"
        );
        assert_eq!(err.exit_code(), EXIT_REMOTE);
    }

    #[test]
    fn local_errors_exit_one() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), EXIT_LOCAL);
        assert_eq!(CliError::not_found("a/b").exit_code(), EXIT_REMOTE);
        assert_eq!(
            CliError::not_found("secret/x").to_string(),
            "No value found at secret/x"
        );
    }
}
