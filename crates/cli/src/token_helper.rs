//! The token helper: the token `bunker login` stores in `~/.vault-token` (the file `vault`
//! uses), read back by every command when `VAULT_TOKEN` is not set.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::CliError;

const TOKEN_FILE: &str = ".vault-token";

/// `$HOME/.vault-token`, if `HOME` is set.
pub fn token_path() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join(TOKEN_FILE))
}

/// The token to use: `VAULT_TOKEN`, else the stored one.
pub fn current_token() -> Option<Zeroizing<String>> {
    env_token().or_else(|| token_path().and_then(|path| read_token(&path)))
}

/// `VAULT_TOKEN`, if set and not blank.
pub fn env_token() -> Option<Zeroizing<String>> {
    let value = Zeroizing::new(std::env::var("VAULT_TOKEN").ok()?);
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| Zeroizing::new(trimmed.to_string()))
}

/// The token stored at `path`, trimmed; `None` if missing or empty.
pub fn read_token(path: &Path) -> Option<Zeroizing<String>> {
    let text = Zeroizing::new(fs::read_to_string(path).ok()?);
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| Zeroizing::new(trimmed.to_string()))
}

/// Stores `token` at `path` with mode 0600: written to a temporary file beside it, synced,
/// then renamed over the old one so a crash never leaves a half-written token.
pub fn store_token(path: &Path, token: &str) -> Result<(), CliError> {
    let doing = format!("storing token in {}", path.display());
    let io_err = |e| CliError::io(doing.clone(), e);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| TOKEN_FILE.to_string());
    let temp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = create_private(&temp)?;
        file.write_all(token.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(io_err)
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_token_reads_back_private() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(TOKEN_FILE);
        assert!(read_token(&path).is_none());
        store_token(&path, "hvs.first")?;
        store_token(&path, "hvs.second")?;
        assert_eq!(
            read_token(&path).as_deref().map(String::as_str),
            Some("hvs.second")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(
            fs::read_dir(dir.path())?.count(),
            1,
            "no temporary file left"
        );
        Ok(())
    }

    #[test]
    fn blank_token_file_means_no_token() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(TOKEN_FILE);
        fs::write(&path, "  \n")?;
        assert!(read_token(&path).is_none());
        Ok(())
    }
}
