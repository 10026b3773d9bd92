//! Parsing a policy document (HCL or JSON) into path rules.

use serde_json::{Map, Value};

use crate::capability::{unknown_capability_message, CapabilitySet};
use crate::pattern::PathPattern;
use crate::{Capability, PolicyError};

/// Keys Vault accepts inside a `path` block that Bunker accepts but does not enforce.
const IGNORED_RULE_KEYS: &[&str] = &[
    "allowed_parameters",
    "denied_parameters",
    "required_parameters",
    "min_wrapping_ttl",
    "max_wrapping_ttl",
    "mfa_methods",
    "control_group",
    "subscribe_event_types",
    "comment",
];

/// A named ACL policy: its source text and the path rules parsed from it.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub raw: String,
    rules: Vec<PathRule>,
}

/// One `path "<pattern>" { ... }` block.
#[derive(Clone, Debug)]
pub struct PathRule {
    pub(crate) pattern: PathPattern,
    pub(crate) capabilities: CapabilitySet,
}

impl PathRule {
    /// The pattern, without leading `/`, including any trailing `*`.
    pub fn pattern(&self) -> &str {
        self.pattern.as_str()
    }

    /// The capabilities this block grants, `[Deny]` if it denies.
    pub fn capabilities(&self) -> Vec<Capability> {
        self.capabilities.to_vec()
    }
}

impl Policy {
    /// Parses a policy in HCL or, when the text starts with `{`, in Vault's JSON form
    /// (`{"path": {"secret/*": {"capabilities": ["read"]}}}`).
    ///
    /// Each `path` block takes `capabilities = [...]` and/or the legacy
    /// `policy = "read" | "write" | "sudo" | "deny"` (both are unioned). Parameter
    /// constraints and wrapping TTLs are accepted and ignored. Syntax errors are
    /// [`PolicyError::Parse`]; unknown keys, capabilities and bad patterns are
    /// [`PolicyError::Invalid`].
    pub fn parse(name: &str, text: &str) -> Result<Policy, PolicyError> {
        let document = parse_document(text)
            .map_err(|e| PolicyError::Parse(format!("failed to parse policy {name:?}: {e}")))?;
        let rules = rules_from_document(&document)
            .map_err(|e| PolicyError::Invalid(format!("invalid policy {name:?}: {e}")))?;
        Ok(Policy {
            name: name.to_owned(),
            raw: text.to_owned(),
            rules,
        })
    }

    /// The path rules in the order they appear (HCL blocks with the same pattern are grouped).
    pub fn rules(&self) -> &[PathRule] {
        &self.rules
    }
}

/// Reads the document into its JSON shape: HCL blocks `path "p" { .. }` become
/// `{"path": {"p": {..}}}` per the HCL JSON specification, repeated blocks become arrays.
/// The HCL native parser does not accept JSON, so JSON is told apart by its leading `{`.
fn parse_document(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))
    } else {
        hcl::from_str(text).map_err(|e| e.to_string().trim_start().to_owned())
    }
}

fn rules_from_document(document: &Value) -> Result<Vec<PathRule>, String> {
    let Value::Object(top) = document else {
        return Err("expected an object of `path` blocks".to_owned());
    };
    let mut rules = Vec::new();
    for (key, value) in top {
        match key.as_str() {
            "path" => collect_paths(value, &mut rules)?,
            "name" => {}
            other => return Err(format!("unknown top-level key {other:?}")),
        }
    }
    Ok(rules)
}

/// `path` holds an object of pattern → block, or (older JSON) a list of such objects.
fn collect_paths(value: &Value, rules: &mut Vec<PathRule>) -> Result<(), String> {
    match value {
        Value::Object(by_pattern) => {
            for (pattern, block) in by_pattern {
                collect_blocks(pattern, block, rules)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|item| collect_paths(item, rules)),
        _ => Err("`path` must be a block with a pattern label".to_owned()),
    }
}

/// A pattern maps to one block, or to a list of blocks when it was written more than once.
fn collect_blocks(pattern: &str, block: &Value, rules: &mut Vec<PathRule>) -> Result<(), String> {
    match block {
        Value::Object(fields) => {
            rules.push(parse_rule(pattern, fields)?);
            Ok(())
        }
        Value::Array(blocks) => blocks
            .iter()
            .try_for_each(|block| collect_blocks(pattern, block, rules)),
        other => Err(format!(
            "path {pattern:?}: expected a block {{ capabilities = [...] }}, got {other}"
        )),
    }
}

fn parse_rule(pattern: &str, fields: &Map<String, Value>) -> Result<PathRule, String> {
    let parsed_pattern = PathPattern::parse(pattern)?;
    let mut capabilities = CapabilitySet::default();
    for (key, value) in fields {
        match key.as_str() {
            "capabilities" => {
                let listed =
                    capability_list(value).map_err(|e| format!("path {pattern:?}: {e}"))?;
                capabilities.union_with(listed);
            }
            "policy" => {
                let Value::String(legacy) = value else {
                    return Err(format!("path {pattern:?}: `policy` must be a string"));
                };
                capabilities.union_with(legacy_policy(legacy).ok_or_else(|| {
                    format!(
                        "path {pattern:?}: unknown policy {legacy:?} (expected read, write, sudo or deny)"
                    )
                })?);
            }
            ignored if IGNORED_RULE_KEYS.contains(&ignored) => {}
            other => return Err(format!("path {pattern:?}: unknown key {other:?}")),
        }
    }
    Ok(PathRule {
        pattern: parsed_pattern,
        capabilities,
    })
}

fn capability_list(value: &Value) -> Result<CapabilitySet, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "`capabilities` must be a list of strings, got {value}"
        ));
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(name) => name
                .parse::<Capability>()
                .map_err(|_| unknown_capability_message(name)),
            other => Err(format!("capabilities must be strings, got {other}")),
        })
        .collect()
}

/// The pre-0.9 `policy = "..."` shorthand.
fn legacy_policy(name: &str) -> Option<CapabilitySet> {
    use Capability::*;
    let write = [Create, Read, Update, Delete, List, Patch];
    let set = match name {
        "deny" => [Deny].into_iter().collect(),
        "read" => [Read, List].into_iter().collect(),
        "write" => write.into_iter().collect(),
        "sudo" => write.into_iter().chain([Sudo]).collect(),
        _ => return None,
    };
    Some(set)
}
