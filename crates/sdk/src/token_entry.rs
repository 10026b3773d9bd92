//! A token as the token store keeps it, and as a backend sees its caller's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::time_util::{now_unix, rfc3339};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    #[default]
    Service,
    Batch,
}

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Service => "service",
            TokenType::Batch => "batch",
        }
    }
}

/// A token's stored state. The token id itself is never stored, only its hash.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct TokenEntry {
    #[serde(default)]
    pub id_hash: String,
    #[serde(default)]
    pub accessor: String,
    #[serde(default)]
    pub parent_hash: String,
    pub policies: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub num_uses: u64,
    /// The last of `num_uses` has been spent; the token is refused until its revocation
    /// (which follows the request that spent it) completes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uses_exhausted: bool,
    #[serde(default)]
    pub creation_time: u64,
    #[serde(default)]
    pub creation_ttl: u64,
    #[serde(default)]
    pub ttl: u64,
    #[serde(default)]
    pub explicit_max_ttl: u64,
    #[serde(default)]
    pub period: u64,
    #[serde(default)]
    pub renewable: bool,
    #[serde(default)]
    pub orphan: bool,
    #[serde(default)]
    pub token_type: TokenType,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub path: String,
    /// The largest lifetime renewals may reach (seconds from creation): for a login, the
    /// smaller of the role's `token_max_ttl` and the mount's max lease TTL; 0 for none beyond
    /// the system maximum.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_ttl: u64,
    /// Client addresses the token may be used from (`token_bound_cidrs`); empty for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_cidrs: Vec<String>,
    #[serde(default)]
    pub expire_time: u64,
    #[serde(default)]
    pub last_renewal_time: u64,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("accessor", &self.accessor)
            .field("policies", &self.policies)
            .field("token_type", &self.token_type)
            .field("expire_time", &self.expire_time)
            .finish_non_exhaustive()
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl TokenEntry {
    /// A root token's entry, as `sys/init` and a generate-root quorum create it: policy
    /// `root`, no parent, no expiry.
    pub fn root() -> TokenEntry {
        TokenEntry {
            policies: vec!["root".into()],
            display_name: "root".into(),
            path: "auth/token/root".into(),
            orphan: true,
            token_type: TokenType::Service,
            ..Default::default()
        }
    }

    pub fn is_expired(&self, now: u64) -> bool {
        self.expire_time != 0 && now >= self.expire_time
    }

    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    pub fn remaining_ttl(&self) -> u64 {
        if self.expire_time == 0 {
            0
        } else {
            self.expire_time.saturating_sub(now_unix())
        }
    }

    /// The cubbyhole namespace of this token ("" for batch tokens, which have no cubbyhole).
    pub fn cubbyhole_namespace(&self) -> &str {
        match self.token_type {
            TokenType::Service => &self.id_hash,
            TokenType::Batch => "",
        }
    }

    /// The `data` of a token lookup. `id` is the token itself when the caller presented it.
    pub fn lookup_data(&self, id: &str) -> Map<String, Value> {
        let expire = if self.expire_time == 0 {
            Value::Null
        } else {
            Value::String(rfc3339(self.expire_time))
        };
        let meta = if self.meta.is_empty() {
            Value::Null
        } else {
            json!(self.meta)
        };
        let mut data = Map::new();
        data.insert("accessor".into(), json!(self.accessor));
        data.insert("creation_time".into(), json!(self.creation_time));
        data.insert("creation_ttl".into(), json!(self.creation_ttl));
        data.insert("display_name".into(), json!(self.display_name));
        data.insert("entity_id".into(), json!(""));
        data.insert("expire_time".into(), expire);
        data.insert("explicit_max_ttl".into(), json!(self.explicit_max_ttl));
        data.insert("id".into(), json!(id));
        data.insert("issue_time".into(), json!(rfc3339(self.creation_time)));
        data.insert("meta".into(), meta);
        data.insert("num_uses".into(), json!(self.num_uses));
        data.insert("orphan".into(), json!(self.orphan));
        data.insert("path".into(), json!(self.path));
        data.insert("policies".into(), json!(self.policies));
        data.insert("renewable".into(), json!(self.renewable));
        data.insert("ttl".into(), json!(self.remaining_ttl()));
        data.insert("type".into(), json!(self.token_type.as_str()));
        if self.period > 0 {
            data.insert("period".into(), json!(self.period));
        }
        if !self.role.is_empty() {
            data.insert("role".into(), json!(self.role));
        }
        if !self.bound_cidrs.is_empty() {
            data.insert("bound_cidrs".into(), json!(self.bound_cidrs));
        }
        if self.last_renewal_time > 0 {
            data.insert("last_renewal_time".into(), json!(self.last_renewal_time));
        }
        data
    }
}
