//! Paths a backend declares special (Vault's `PathsSpecial`), relative to where it is
//! mounted. The core consults the declaration of the backend a request routes to; no central
//! list names another backend's paths.

/// `root` paths need `sudo` on top of the operation's capability (Vault's root-protected
/// paths); `unauthenticated` paths are served without a token (an auth method's `login`).
///
/// In both lists, as in Vault, a pattern ending in `*` matches every path starting with what
/// precedes it, and any other pattern only itself; a root pattern ending in `/` matches every
/// path under that folder.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpecialPaths {
    pub root: &'static [&'static str],
    pub unauthenticated: &'static [&'static str],
}

impl SpecialPaths {
    pub const NONE: SpecialPaths = SpecialPaths {
        root: &[],
        unauthenticated: &[],
    };

    /// Whether `rel` (relative to the mount) is served without a token.
    pub fn is_unauthenticated(&self, rel: &str) -> bool {
        self.unauthenticated.iter().any(|p| matches(p, rel))
    }

    /// Whether `rel` (relative to the mount) is root-protected. A trailing slash does not
    /// make a protected path unprotected (`seal/` is `seal`).
    pub fn is_root(&self, rel: &str) -> bool {
        let bare = rel.trim_end_matches('/');
        self.root.iter().any(|p| {
            matches(p, rel) || matches(p, bare) || (p.ends_with('/') && rel.starts_with(p))
        })
    }
}

/// Vault's special-path match: a trailing `*` is a prefix, anything else the exact path.
fn matches(pattern: &str, rel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => rel.starts_with(prefix),
        None => rel == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::SpecialPaths;

    #[test]
    fn folders_and_exact_paths() {
        let s = SpecialPaths {
            root: &["audit", "audit/*", "raw/", "rotate", "remount"],
            unauthenticated: &[],
        };
        assert!(s.is_root("audit"));
        assert!(s.is_root("rotate/"), "a trailing slash protects as well");
        assert!(s.is_root("remount//"));
        assert!(s.is_root("audit/file"));
        assert!(s.is_root("remount"));
        assert!(!s.is_root("remount/status/x"), "only the path itself");
        assert!(!s.is_root("audit-hash/file"));
        assert!(s.is_root("raw/x"));
        assert!(!s.is_root("raw"));
        assert!(s.is_root("rotate"));
        assert!(!s.is_root("mounts"));
        assert!(!SpecialPaths::NONE.is_root("anything"));
    }

    #[test]
    fn unauthenticated_globs_and_exact_paths() {
        let s = SpecialPaths {
            root: &[],
            unauthenticated: &["login", "login/*"],
        };
        assert!(s.is_unauthenticated("login"));
        assert!(s.is_unauthenticated("login/alice"));
        assert!(!s.is_unauthenticated("login-x"));
        assert!(!s.is_unauthenticated("users/alice"));
        assert!(!SpecialPaths::NONE.is_unauthenticated("login"));
    }
}
