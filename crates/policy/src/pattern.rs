//! Policy path patterns: exact paths, a trailing `*` prefix glob, and `+` single-segment
//! wildcards, with Vault's priority order between patterns that match the same path.

use std::cmp::{Ordering, Reverse};

/// A validated path pattern from a `path "<pattern>"` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PathPattern {
    /// The pattern as written, minus leading `/`, including any trailing `*`.
    text: String,
    /// The pattern without its trailing `*`, split on `/`.
    segments: Vec<Segment>,
    /// Ends in `*`: the last segment matches as a prefix and deeper paths match too.
    is_prefix: bool,
    /// Byte offset of the first `+` segment or the `*`; `None` for exact patterns.
    first_wildcard: Option<usize>,
    /// Number of `+` segments.
    plus_segments: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `+`: exactly one non-empty segment.
    Any,
}

impl PathPattern {
    /// Validates a pattern. `*` is allowed only as the last character, and `+*` is rejected
    /// (as Vault does); `+` is a wildcard only when it is a whole segment (`a+b` is literal).
    pub(crate) fn parse(raw: &str) -> Result<PathPattern, String> {
        let text = raw.trim_start_matches('/');
        let (body, is_prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if body.contains('*') {
            return Err(format!(
                "path {raw:?}: '*' is only allowed as the last character"
            ));
        }
        if text.contains("+*") {
            return Err(format!(
                "path {raw:?}: '+*' is not allowed; use '+/*' or '*'"
            ));
        }

        let mut segments = Vec::new();
        let mut first_wildcard = None;
        let mut plus_segments = 0;
        let mut offset = 0;
        for part in body.split('/') {
            if part == "+" {
                first_wildcard.get_or_insert(offset);
                plus_segments += 1;
                segments.push(Segment::Any);
            } else {
                segments.push(Segment::Literal(part.to_owned()));
            }
            offset += part.len() + 1;
        }
        if is_prefix {
            first_wildcard.get_or_insert(body.len());
        }

        Ok(PathPattern {
            text: text.to_owned(),
            segments,
            is_prefix,
            first_wildcard,
            plus_segments,
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// No `*` and no `+`: matches only the identical path.
    pub(crate) fn is_exact(&self) -> bool {
        self.first_wildcard.is_none()
    }

    /// Whether `path` (already stripped of leading `/`) matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/');
        let last = self.segments.len().saturating_sub(1);
        for (index, segment) in self.segments.iter().enumerate() {
            let Some(part) = parts.next() else {
                return false;
            };
            let segment_matches = match segment {
                Segment::Any => !part.is_empty(),
                Segment::Literal(literal) if self.is_prefix && index == last => {
                    part.starts_with(literal.as_str())
                }
                Segment::Literal(literal) => part == literal,
            };
            if !segment_matches {
                return false;
            }
        }
        self.is_prefix || parts.next().is_none()
    }

    /// Orders patterns by Vault's priority rules; `Greater` means `self` wins. Given two
    /// patterns that match the same path, P1 has lower priority if, in this order:
    /// 1. its first `+` or `*` occurs earlier;
    /// 2. it ends in `*` and the other does not;
    /// 3. it has more `+` segments;
    /// 4. it is shorter;
    /// 5. it is lexicographically smaller.
    ///
    /// Exact patterns have no wildcard, so rule 1 puts them above every glob. Distinct
    /// patterns never compare equal (rule 5).
    pub(crate) fn cmp_priority(&self, other: &PathPattern) -> Ordering {
        self.priority_key().cmp(&other.priority_key())
    }

    fn priority_key(&self) -> (usize, bool, Reverse<usize>, usize, &str) {
        (
            self.first_wildcard.unwrap_or(usize::MAX),
            !self.is_prefix,
            Reverse(self.plus_segments),
            self.text.len(),
            &self.text,
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> PathPattern {
        PathPattern::parse(text).unwrap()
    }

    fn winner<'a>(a: &'a str, b: &'a str) -> &'a str {
        let (pa, pb) = (pattern(a), pattern(b));
        assert_eq!(pa.cmp_priority(&pb), pb.cmp_priority(&pa).reverse());
        match pa.cmp_priority(&pb) {
            Ordering::Greater => a,
            Ordering::Less => b,
            Ordering::Equal => panic!("{a} and {b} tie"),
        }
    }

    #[test]
    fn exact_matches_only_itself() {
        let p = pattern("secret/foo");
        assert!(p.is_exact());
        assert!(p.matches("secret/foo"));
        assert!(!p.matches("secret/foo/"));
        assert!(!p.matches("secret/foobar"));
        assert!(!p.matches("secret"));
    }

    #[test]
    fn leading_slash_is_stripped() {
        assert_eq!(pattern("/secret/*").as_str(), "secret/*");
        assert!(pattern("/secret/foo").matches("secret/foo"));
    }

    #[test]
    fn trailing_glob_is_a_prefix_match() {
        let p = pattern("secret/*");
        assert!(!p.is_exact());
        assert!(p.matches("secret/"));
        assert!(p.matches("secret/foo"));
        assert!(p.matches("secret/foo/bar/baz"));
        assert!(!p.matches("secret"));
        assert!(!p.matches("secrets/foo"));

        let p = pattern("secret/fo*");
        assert!(p.matches("secret/fo"));
        assert!(p.matches("secret/foo/bar"));
        assert!(!p.matches("secret/f"));

        let all = pattern("*");
        assert!(all.matches(""));
        assert!(all.matches("anything/at/all"));
    }

    #[test]
    fn plus_matches_exactly_one_non_empty_segment() {
        let p = pattern("secret/+/bar");
        assert!(p.matches("secret/foo/bar"));
        assert!(!p.matches("secret//bar"), "empty segment");
        assert!(!p.matches("secret/a/b/bar"), "two segments");
        assert!(!p.matches("secret/bar"), "no segment");
        assert!(!p.matches("secret/foo/bar/baz"));

        let trailing = pattern("secret/+");
        assert!(trailing.matches("secret/foo"));
        assert!(!trailing.matches("secret/"));
        assert!(!trailing.matches("secret/foo/bar"));

        let leading = pattern("+/config");
        assert!(leading.matches("kv/config"));
        assert!(!leading.matches("/config"));
    }

    #[test]
    fn plus_with_trailing_glob() {
        let p = pattern("secret/+/*");
        assert!(p.matches("secret/team/"));
        assert!(p.matches("secret/team/app/key"));
        assert!(!p.matches("secret/team"));
        assert!(!p.matches("secret//x"));

        let p = pattern("secret/+/ap*");
        assert!(p.matches("secret/team/app/key"));
        assert!(!p.matches("secret/team/db"));
    }

    #[test]
    fn plus_inside_a_segment_is_literal() {
        let p = pattern("secret/a+b");
        assert!(p.is_exact());
        assert!(p.matches("secret/a+b"));
        assert!(!p.matches("secret/axb"));
    }

    #[test]
    fn misplaced_wildcards_are_rejected() {
        for bad in [
            "secret/*/foo",
            "secret/a*b",
            "**",
            "secret/+*",
            "secret/a+*",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn priority_follows_vaults_rules() {
        // Exact beats glob.
        assert_eq!(winner("secret/*", "secret/foo"), "secret/foo");
        // Same first wildcard position; the one not ending in `*` wins (rule 2).
        assert_eq!(winner("secret/+/bar", "secret/*"), "secret/+/bar");
        // The first wildcard occurs later in a/b/* (rule 1).
        assert_eq!(winner("a/+/c", "a/b/*"), "a/b/*");
        // Vault's documented example: fewer `+` segments wins (rule 3).
        assert_eq!(winner("secret/*", "secret/+/+/foo/*"), "secret/*");
        // Longer wins (rule 4).
        assert_eq!(winner("secret/+/ab*", "secret/+/abc*"), "secret/+/abc*");
        // Lexicographically larger wins (rule 5): '+' sorts before 'a'.
        assert_eq!(winner("+/a/+", "+/+/b"), "+/a/+");
    }
}
