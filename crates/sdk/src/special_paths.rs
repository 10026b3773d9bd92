//! Paths a backend declares special (Vault's `PathsSpecial`), relative to where it is
//! mounted. The core consults the declaration of the backend a request routes to; no central
//! list names another backend's paths.

/// `root` paths need `sudo` on top of the operation's capability (Vault's root-protected
/// paths). A pattern ending in `/` matches every path under it; any other pattern matches
/// itself and every path under it.
///
/// `unauthenticated` paths are served without a token (an auth method's `login`). A pattern
/// ending in `*` matches every path starting with what precedes it; any other pattern matches
/// only itself.
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
        self.unauthenticated
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => rel.starts_with(prefix),
                None => rel == *p,
            })
    }

    /// Whether `rel` (relative to the mount) is root-protected.
    pub fn is_root(&self, rel: &str) -> bool {
        self.root.iter().any(|p| {
            if p.ends_with('/') {
                rel.starts_with(p)
            } else {
                rel == *p
                    || rel
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::SpecialPaths;

    #[test]
    fn folders_and_exact_paths() {
        let s = SpecialPaths {
            root: &["audit", "raw/", "rotate"],
            unauthenticated: &[],
        };
        assert!(s.is_root("audit"));
        assert!(s.is_root("audit/file"));
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
