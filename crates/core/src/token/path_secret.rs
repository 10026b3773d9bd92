//! Token endpoints that take the token itself, or its accessor, as the rest of the URL path
//! (`auth/token/lookup/<token>`, `auth/token/revoke-accessor/<accessor>`, ...). Such a path
//! is a secret: the audit device HMACs that part and server logs redact it.

/// What the rest of a path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathSecret {
    Token,
    Accessor,
}

const TOKEN_PATHS: &[&str] = &[
    "auth/token/lookup/",
    "auth/token/renew/",
    "auth/token/revoke/",
    "auth/token/revoke-orphan/",
];

const ACCESSOR_PATHS: &[&str] = &[
    "auth/token/lookup-accessor/",
    "auth/token/renew-accessor/",
    "auth/token/revoke-accessor/",
];

/// Split a (normalised) request path into the endpoint prefix and the token or accessor that
/// follows it; `None` when the path carries neither.
pub fn secret_in_path(path: &str) -> Option<(&str, &str, PathSecret)> {
    let kinds = [
        (TOKEN_PATHS, PathSecret::Token),
        (ACCESSOR_PATHS, PathSecret::Accessor),
    ];
    for (prefixes, kind) in kinds {
        for prefix in prefixes {
            if let Some(secret) = path.strip_prefix(prefix).filter(|s| !s.is_empty()) {
                return Some((prefix, secret, kind));
            }
        }
    }
    None
}

/// The path with any token or accessor in it replaced, for server logs.
pub fn redact_path(path: &str) -> std::borrow::Cow<'_, str> {
    let trimmed = path.trim_start_matches('/');
    match secret_in_path(trimmed) {
        Some((prefix, _, _)) => format!("{prefix}<redacted>").into(),
        None => path.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tokens_and_accessors_in_paths() {
        assert_eq!(
            secret_in_path("auth/token/lookup/hvs.abc"),
            Some(("auth/token/lookup/", "hvs.abc", PathSecret::Token))
        );
        assert_eq!(
            secret_in_path("auth/token/revoke-accessor/xyz"),
            Some(("auth/token/revoke-accessor/", "xyz", PathSecret::Accessor))
        );
        assert_eq!(secret_in_path("auth/token/lookup-self"), None);
        assert_eq!(secret_in_path("auth/token/lookup/"), None);
        assert_eq!(secret_in_path("secret/data/auth/token/lookup/x"), None);
        assert_eq!(
            redact_path("/auth/token/renew/hvs.abc"),
            "auth/token/renew/<redacted>"
        );
        assert_eq!(redact_path("secret/data/a"), "secret/data/a");
    }
}
