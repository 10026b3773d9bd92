//! Parsing and ACL behaviour through the public API.
#![allow(clippy::unwrap_used)]

use crate::Capability::{self, *};
use crate::{capability_names, Acl, Policy, PolicyError};
use crate::{DEFAULT_POLICY, RESPONSE_WRAPPING_POLICY};

fn policy(name: &str, text: &str) -> Policy {
    match Policy::parse(name, text) {
        Ok(p) => p,
        Err(e) => panic!("policy {name} rejected: {e}"),
    }
}

fn acl(texts: &[&str]) -> Acl {
    let policies: Vec<Policy> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| policy(&format!("p{i}"), text))
        .collect();
    Acl::new(&policies)
}

fn rules_of(p: &Policy) -> Vec<(String, Vec<Capability>)> {
    let mut rules: Vec<_> = p
        .rules()
        .iter()
        .map(|r| (r.pattern().to_owned(), r.capabilities()))
        .collect();
    rules.sort();
    rules
}

fn invalid_message(text: &str) -> String {
    match Policy::parse("bad", text) {
        Err(PolicyError::Invalid(msg)) => msg,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

// ---- parsing ----

#[test]
fn parses_hcl_path_blocks() {
    let p = policy(
        "ops",
        r#"
        # comment
        path "secret/*" {
          capabilities = ["read", "list"]
        }
        path "/sys/mounts" {
          capabilities = ["sudo", "update"]
        }
        "#,
    );
    assert_eq!(p.name, "ops");
    assert!(p.raw.contains("secret/*"));
    assert_eq!(
        rules_of(&p),
        [
            ("secret/*".to_owned(), vec![Read, List]),
            ("sys/mounts".to_owned(), vec![Update, Sudo]),
        ]
    );
}

#[test]
fn parses_json_policies() {
    let p = policy(
        "json",
        r#"{"path": {"secret/*": {"capabilities": ["read"]}, "sys/health": {"policy": "deny"}}}"#,
    );
    assert_eq!(
        rules_of(&p),
        [
            ("secret/*".to_owned(), vec![Read]),
            ("sys/health".to_owned(), vec![Deny]),
        ]
    );

    // The older list-of-objects JSON form.
    let p = policy(
        "json-list",
        r#"  {"path": [{"a/*": {"capabilities": ["list"]}}, {"b": [{"capabilities": ["read"]}]}]}"#,
    );
    assert_eq!(
        rules_of(&p),
        [("a/*".to_owned(), vec![List]), ("b".to_owned(), vec![Read])]
    );
}

#[test]
fn hcl_parser_does_not_take_json_so_json_is_detected() {
    // Documents why `Policy::parse` routes `{...}` documents to the JSON parser.
    let json = r#"{"path": {"secret/*": {"capabilities": ["read"]}}}"#;
    assert!(hcl::from_str::<serde_json::Value>(json).is_err());
}

#[test]
fn legacy_policy_field_maps_to_capabilities() {
    let p = policy(
        "legacy",
        r#"
        path "r" { policy = "read" }
        path "w" { policy = "write" }
        path "s" { policy = "sudo" }
        path "d" { policy = "deny" }
        path "mixed" {
          policy       = "read"
          capabilities = ["create", "sudo"]
        }
        "#,
    );
    let write = vec![Create, Read, Update, Delete, List, Patch];
    let sudo = vec![Create, Read, Update, Delete, List, Patch, Sudo];
    assert_eq!(
        rules_of(&p),
        [
            ("d".to_owned(), vec![Deny]),
            ("mixed".to_owned(), vec![Create, Read, List, Sudo]),
            ("r".to_owned(), vec![Read, List]),
            ("s".to_owned(), sudo),
            ("w".to_owned(), write),
        ]
    );
    let msg = invalid_message(r#"path "x" { policy = "admin" }"#);
    assert!(msg.contains("\"admin\""), "{msg}");
}

#[test]
fn parameter_constraints_and_wrapping_ttls_are_accepted_and_ignored() {
    let p = policy(
        "params",
        r#"
        path "secret/foo" {
          capabilities = ["create"]
          allowed_parameters = {
            "bar" = ["zip", "zap"]
            "*"   = []
          }
          denied_parameters = { "baz" = [] }
          required_parameters = ["bar"]
          min_wrapping_ttl = "1s"
          max_wrapping_ttl = 90
        }
        "#,
    );
    assert_eq!(rules_of(&p), [("secret/foo".to_owned(), vec![Create])]);
}

#[test]
fn repeated_blocks_for_one_pattern_are_kept_and_merged_by_the_acl() {
    let p = policy(
        "dup",
        r#"
        path "secret/a" { capabilities = ["read"] }
        path "secret/a" { capabilities = ["update"] }
        "#,
    );
    assert_eq!(p.rules().len(), 2);
    let acl = Acl::new(&[p]);
    assert_eq!(acl.capabilities("secret/a"), [Read, Update]);
}

#[test]
fn empty_policy_grants_nothing() {
    let acl = acl(&["", "# only a comment\n"]);
    assert!(acl.capabilities("secret/foo").is_empty());
}

#[test]
fn syntax_error_is_a_parse_error_with_the_parsers_message() {
    for text in [
        r#"path "secret/*" { capabilities = ["read"] "#,
        r#"path "secret/*" { capabilities = ["read" }"#,
        "{ not json",
    ] {
        match Policy::parse("broken", text) {
            Err(PolicyError::Parse(msg)) => {
                assert!(
                    msg.starts_with("failed to parse policy \"broken\": "),
                    "{msg}"
                );
                assert!(msg.len() > "failed to parse policy \"broken\": ".len());
            }
            other => panic!("{text:?} gave {other:?}"),
        }
    }
}

#[test]
fn unknown_capability_is_invalid_and_named() {
    let msg = invalid_message(r#"path "secret/*" { capabilities = ["read", "reed"] }"#);
    assert!(msg.contains("\"bad\""), "{msg}");
    assert!(msg.contains("\"secret/*\""), "{msg}");
    assert!(msg.contains("unknown capability \"reed\""), "{msg}");
}

#[test]
fn malformed_documents_are_invalid() {
    for text in [
        r#"path "a" { capabilities = "read" }"#,
        r#"path "a" { capabilities = [1] }"#,
        r#"path "a" { capabilitiez = ["read"] }"#,
        r#"path "a/*/b" { capabilities = ["read"] }"#,
        r#"path "a/+*" { capabilities = ["read"] }"#,
        r#"paths "a" { capabilities = ["read"] }"#,
        r#"path = "a""#,
        r#"{"path": {"a": "read"}}"#,
        "[1, 2]",
    ] {
        match Policy::parse("bad", text) {
            Err(PolicyError::Invalid(_)) => {}
            // `[1, 2]` is not HCL at all.
            Err(PolicyError::Parse(_)) if text.starts_with('[') => {}
            other => panic!("{text:?} gave {other:?}"),
        }
    }
}

#[test]
fn builtin_policies_parse() {
    policy("default", DEFAULT_POLICY);
    policy("response-wrapping", RESPONSE_WRAPPING_POLICY);
}

// ---- ACL evaluation ----

#[test]
fn exact_match_beats_glob() {
    let acl = acl(&[r#"
        path "secret/*"   { capabilities = ["read", "list"] }
        path "secret/foo" { capabilities = ["update"] }
    "#]);
    assert_eq!(acl.capabilities("secret/foo"), [Update]);
    assert!(!acl.allows("secret/foo", Read));
    assert_eq!(acl.capabilities("secret/bar"), [Read, List]);
    assert!(acl.capabilities("secret").is_empty());
    assert!(acl.capabilities("other/foo").is_empty());
}

#[test]
fn plus_without_glob_beats_glob_at_the_same_position() {
    let acl = acl(&[r#"
        path "secret/*"     { capabilities = ["read"] }
        path "secret/+/bar" { capabilities = ["deny"] }
    "#]);
    assert_eq!(acl.capabilities("secret/x/bar"), [Deny]);
    assert_eq!(acl.capabilities("secret/x/baz"), [Read]);
    assert_eq!(acl.capabilities("secret/x/bar/deeper"), [Read]);
}

#[test]
fn later_first_wildcard_wins() {
    let acl = acl(&[r#"
        path "a/+/c" { capabilities = ["read"] }
        path "a/b/*" { capabilities = ["update"] }
    "#]);
    assert_eq!(acl.capabilities("a/b/c"), [Update]);
    assert_eq!(acl.capabilities("a/x/c"), [Read]);
}

#[test]
fn fewer_plus_segments_win() {
    let acl = acl(&[r#"
        path "secret/*"         { capabilities = ["read"] }
        path "secret/+/+/foo/*" { capabilities = ["update"] }
    "#]);
    assert_eq!(acl.capabilities("secret/a/b/foo/c"), [Read]);
}

#[test]
fn longer_glob_wins() {
    let acl = acl(&[r#"
        path "secret/*"     { capabilities = ["read"] }
        path "secret/app/*" { capabilities = ["update"] }
    "#]);
    assert_eq!(acl.capabilities("secret/app/key"), [Update]);
    assert_eq!(acl.capabilities("secret/db/key"), [Read]);
}

#[test]
fn plus_never_matches_empty_or_several_segments() {
    let acl = acl(&[r#"path "kv/+/config" { capabilities = ["read"] }"#]);
    assert!(acl.allows("kv/team/config", Read));
    assert!(!acl.allows("kv//config", Read));
    assert!(!acl.allows("kv/config", Read));
    assert!(!acl.allows("kv/a/b/config", Read));
}

#[test]
fn identical_patterns_union_across_policies() {
    let acl = acl(&[
        r#"path "secret/*" { capabilities = ["read"] }"#,
        r#"path "secret/*" { capabilities = ["list", "create"] }"#,
    ]);
    assert_eq!(acl.capabilities("secret/x"), [Create, Read, List]);
    assert!(acl.allows("secret/x", Create));
    assert!(!acl.allows("secret/x", Delete));
}

#[test]
fn deny_in_any_policy_overrides_grants_on_that_pattern() {
    let acl = acl(&[
        r#"path "secret/super" { capabilities = ["read", "update", "sudo"] }"#,
        r#"path "secret/super" { capabilities = ["deny"] }"#,
        r#"path "secret/*"     { capabilities = ["read"] }"#,
    ]);
    assert_eq!(acl.capabilities("secret/super"), [Deny]);
    for cap in Capability::ALL {
        assert!(!acl.allows("secret/super", cap), "{cap} allowed");
    }
    assert_eq!(
        capability_names(&acl.capabilities("secret/super")),
        ["deny"]
    );
    assert!(acl.allows("secret/other", Read));
}

#[test]
fn the_single_governing_rule_does_not_inherit_from_lower_priority_rules() {
    // Vault picks one rule; a more specific rule with fewer capabilities narrows access.
    let acl = acl(&[
        r#"path "secret/*"      { capabilities = ["read", "update"] }"#,
        r#"path "secret/team/*" { capabilities = ["list"] }"#,
    ]);
    assert_eq!(acl.capabilities("secret/team/x"), [List]);
    assert!(!acl.allows("secret/team/x", Read));
}

#[test]
fn request_path_leading_slash_is_ignored() {
    let acl = acl(&[r#"path "secret/foo" { capabilities = ["read"] }"#]);
    assert!(acl.allows("/secret/foo", Read));
}

#[test]
fn no_policies_deny_everything() {
    let acl = Acl::new(&[]);
    assert!(!acl.is_root());
    assert!(acl.capabilities("secret/foo").is_empty());
    assert_eq!(acl.capability_names_for("secret/foo"), ["deny"]);
}

#[test]
fn root_acl_allows_everything() {
    let acl = Acl::root();
    assert!(acl.is_root());
    for path in ["", "sys/seal", "secret/anything/deep"] {
        assert_eq!(acl.capabilities(path), Capability::GRANTING);
        for cap in Capability::GRANTING {
            assert!(acl.allows(path, cap));
        }
        assert!(!acl.allows(path, Deny));
        assert_eq!(acl.capability_names_for(path), ["root"]);
    }
}

#[test]
fn default_policy_grants_self_service_only() {
    let acl = acl(&[DEFAULT_POLICY]);
    assert!(acl.allows("auth/token/lookup-self", Read));
    assert!(acl.allows("auth/token/renew-self", Update));
    assert!(acl.allows("auth/token/revoke-self", Update));
    assert!(acl.allows("sys/capabilities-self", Update));
    assert!(acl.allows("sys/internal/ui/mounts", Read));
    assert!(acl.allows("sys/internal/ui/mounts/secret", Read));
    assert!(acl.allows("sys/leases/renew", Update));
    assert!(acl.allows("sys/leases/lookup", Update));
    assert!(acl.allows("sys/wrapping/unwrap", Update));
    for cap in [Create, Read, Update, Delete, List] {
        assert!(acl.allows("cubbyhole/mine", cap));
    }
    assert!(!acl.allows("auth/token/create", Update));
    assert!(!acl.allows("sys/policy/default", Update));
    assert!(!acl.allows("secret/foo", Read));
    assert!(!acl.allows("cubbyhole/mine", Sudo));
}

#[test]
fn response_wrapping_policy_reads_only_the_wrapped_response() {
    let acl = acl(&[RESPONSE_WRAPPING_POLICY]);
    assert_eq!(acl.capabilities("cubbyhole/response"), [Create, Read]);
    assert!(acl.allows("sys/wrapping/unwrap", Update));
    assert!(!acl.allows("cubbyhole/other", Read));
    assert!(!acl.allows("secret/foo", Read));
}
