//! What an auth method hands the core after a successful login: who logged in and the token
//! parameters of the user or role (Vault's `tokenutil.TokenParams`). The core alone creates
//! the token, bounded by the mount's TTLs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cidr::validate_cidrs;
use crate::fields::{get_bool, get_duration, get_str, get_str_list, get_u64};
use crate::{Data, LogicalError, Result};

/// The `token_*` fields every user or role of an auth method carries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenParams {
    #[serde(default)]
    pub token_ttl: u64,
    #[serde(default)]
    pub token_max_ttl: u64,
    #[serde(default)]
    pub token_explicit_max_ttl: u64,
    #[serde(default)]
    pub token_policies: Vec<String>,
    #[serde(default)]
    pub token_no_default_policy: bool,
    #[serde(default)]
    pub token_num_uses: u64,
    #[serde(default)]
    pub token_period: u64,
    /// `default`, `service`, `batch`, `default-service` or `default-batch` (empty: `default`).
    #[serde(default)]
    pub token_type: String,
    #[serde(default)]
    pub token_bound_cidrs: Vec<String>,
}

impl TokenParams {
    /// Apply the `token_*` fields of a write (and the older `policies` and `period` names).
    pub fn update_from(&mut self, d: &Data) -> Result<()> {
        if let Some(v) = get_duration(d, "token_ttl")? {
            self.token_ttl = v;
        }
        if let Some(v) = get_duration(d, "token_max_ttl")? {
            self.token_max_ttl = v;
        }
        if let Some(v) = get_duration(d, "token_explicit_max_ttl")? {
            self.token_explicit_max_ttl = v;
        }
        if let Some(v) = get_str_list(d, "token_policies")?.or(get_str_list(d, "policies")?) {
            self.token_policies = v
                .into_iter()
                .map(|p| p.to_lowercase())
                .filter(|p| !p.is_empty())
                .collect();
        }
        if let Some(v) = get_bool(d, "token_no_default_policy")? {
            self.token_no_default_policy = v;
        }
        if let Some(v) = get_u64(d, "token_num_uses")? {
            self.token_num_uses = v;
        }
        if let Some(v) = get_duration(d, "token_period")?.or(get_duration(d, "period")?) {
            self.token_period = v;
        }
        if let Some(v) = get_str(d, "token_type")? {
            match v.as_str() {
                "" | "default" | "service" | "batch" | "default-service" | "default-batch" => {
                    self.token_type = v
                }
                _ => {
                    return Err(LogicalError::InvalidRequest(format!(
                        "invalid 'token_type' value {v:?}"
                    )))
                }
            }
        }
        if let Some(v) = get_str_list(d, "token_bound_cidrs")? {
            self.token_bound_cidrs = validate_cidrs(&v)?;
        }
        if self.token_max_ttl > 0 && self.token_ttl > self.token_max_ttl {
            return Err(LogicalError::InvalidRequest(
                "'token_ttl' cannot be greater than 'token_max_ttl'".into(),
            ));
        }
        if self.is_batch() && (self.token_period > 0 || self.token_num_uses > 0) {
            return Err(LogicalError::InvalidRequest(
                "batch tokens cannot be periodic or use-limited".into(),
            ));
        }
        Ok(())
    }

    /// Whether the token to issue is a batch token.
    pub fn is_batch(&self) -> bool {
        matches!(self.token_type.as_str(), "batch" | "default-batch")
    }

    /// The `token_*` fields of a read.
    pub fn write_to(&self, d: &mut Data) {
        let token_type = if self.token_type.is_empty() {
            "default"
        } else {
            &self.token_type
        };
        d.insert("token_ttl".into(), json!(self.token_ttl));
        d.insert("token_max_ttl".into(), json!(self.token_max_ttl));
        d.insert(
            "token_explicit_max_ttl".into(),
            json!(self.token_explicit_max_ttl),
        );
        d.insert("token_policies".into(), json!(self.token_policies));
        d.insert(
            "token_no_default_policy".into(),
            json!(self.token_no_default_policy),
        );
        d.insert("token_num_uses".into(), json!(self.token_num_uses));
        d.insert("token_period".into(), json!(self.token_period));
        d.insert("token_type".into(), json!(token_type));
        d.insert("token_bound_cidrs".into(), json!(self.token_bound_cidrs));
    }
}

/// A successful login: the core turns it into a token and Vault's `auth` block.
#[derive(Clone, Debug, Default)]
pub struct LoginAuth {
    /// Shown in the token's `display_name`, after the mount's name (`userpass-alice`).
    pub display_name: String,
    /// The token's `meta` (`username`, `role_name`, ...).
    pub metadata: BTreeMap<String, String>,
    pub params: TokenParams,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn data(v: Value) -> Data {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn token_fields_and_their_older_names() {
        let mut p = TokenParams::default();
        p.update_from(&data(json!({
            "policies": "A, b", "token_ttl": "1h", "token_max_ttl": "2h", "period": 60,
            "token_bound_cidrs": ["127.0.0.1/32"], "token_num_uses": 3,
        })))
        .unwrap();
        assert_eq!(p.token_policies, ["a", "b"]);
        assert_eq!(
            (p.token_ttl, p.token_max_ttl, p.token_period),
            (3600, 7200, 60)
        );
        assert_eq!(p.token_num_uses, 3);
        let mut shown = Data::new();
        p.write_to(&mut shown);
        assert_eq!(shown["token_type"], json!("default"));
        for bad in [
            json!({"token_ttl": "3h"}),
            json!({"token_type": "other"}),
            json!({"token_bound_cidrs": "nonsense"}),
            json!({"token_type": "batch"}),
        ] {
            assert!(p.clone().update_from(&data(bad.clone())).is_err(), "{bad}");
        }
    }
}
