//! What a backend says about itself when a client asks for help on one of its paths
//! (`GET /v1/<path>?help=1`, Vault's path help): a description of the backend and a synopsis
//! of each path it serves. The core turns it into Vault's `{help, openapi}` answer.

/// A backend's help: what it is, and one line on each path it serves.
#[derive(Clone, Copy, Debug)]
pub struct BackendHelp {
    /// What the backend is and does.
    pub description: &'static str,
    /// Its paths, the most specific first (the first that matches a request is shown).
    pub paths: &'static [PathHelp],
}

/// One path of a backend.
#[derive(Clone, Copy, Debug)]
pub struct PathHelp {
    /// Relative to the mount: literal segments, `:name` for one segment, and a last `*` for
    /// whatever follows (`keys/:name/rotate`, `data/*`).
    pub pattern: &'static str,
    /// What the path does and which operations it takes.
    pub synopsis: &'static str,
}

/// One path's help, in a backend's `const` table of paths.
pub const fn path_help(pattern: &'static str, synopsis: &'static str) -> PathHelp {
    PathHelp { pattern, synopsis }
}

impl BackendHelp {
    /// Help that says nothing but that the backend has none.
    pub const NONE: BackendHelp = BackendHelp {
        description: "",
        paths: &[],
    };

    /// The path help for `rel` (relative to the mount), if one of the paths matches it.
    pub fn path_for(&self, rel: &str) -> Option<&PathHelp> {
        self.paths.iter().find(|p| p.matches(rel))
    }
}

impl PathHelp {
    /// Whether `rel` (a trailing `/` of a LIST ignored) is a path of this pattern.
    pub fn matches(&self, rel: &str) -> bool {
        let rel = rel.strip_suffix('/').unwrap_or(rel);
        let mut given = rel.split('/').filter(|s| !s.is_empty());
        for segment in self.pattern.split('/') {
            if segment == "*" {
                return true;
            }
            match given.next() {
                Some(part) if segment.starts_with(':') || segment == part => {}
                _ => return false,
            }
        }
        given.next().is_none()
    }

    /// The pattern as an OpenAPI path template: `keys/{name}/rotate`, `data/{path}`.
    pub fn openapi_template(&self) -> String {
        self.pattern
            .split('/')
            .map(|segment| match segment.strip_prefix(':') {
                Some(name) => format!("{{{name}}}"),
                None if segment == "*" => "{path}".to_owned(),
                None => segment.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: BackendHelp = BackendHelp {
        description: "test",
        paths: &[
            PathHelp {
                pattern: "keys",
                synopsis: "list",
            },
            PathHelp {
                pattern: "keys/:name/rotate",
                synopsis: "rotate",
            },
            PathHelp {
                pattern: "keys/:name",
                synopsis: "key",
            },
            PathHelp {
                pattern: "data/*",
                synopsis: "data",
            },
        ],
    };

    #[test]
    fn paths_match_by_segment() {
        let synopsis = |rel: &str| HELP.path_for(rel).map(|p| p.synopsis);
        assert_eq!(synopsis("keys/"), Some("list"));
        assert_eq!(synopsis("keys/a"), Some("key"));
        assert_eq!(synopsis("keys/a/rotate"), Some("rotate"));
        assert_eq!(synopsis("keys/a/b"), None);
        assert_eq!(synopsis("data/a/b/c"), Some("data"));
        assert_eq!(synopsis("data"), Some("data"));
        assert_eq!(synopsis(""), None);
        assert_eq!(synopsis("other"), None);
        assert_eq!(HELP.paths[1].openapi_template(), "keys/{name}/rotate");
        assert_eq!(HELP.paths[3].openapi_template(), "data/{path}");
    }
}
