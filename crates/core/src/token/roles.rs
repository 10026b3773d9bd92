//! Token roles (`auth/token/roles/:name`): named templates that bound the tokens created from
//! them (`auth/token/create/:role`).

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::logical::fields::{get_bool, get_duration, get_str, get_str_list};
use crate::logical::{Data, LogicalError, Result};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TokenRole {
    pub name: String,
    #[serde(default)]
    pub allowed_policies: Vec<String>,
    #[serde(default)]
    pub disallowed_policies: Vec<String>,
    #[serde(default)]
    pub orphan: bool,
    #[serde(default)]
    pub period: u64,
    #[serde(default = "yes")]
    pub renewable: bool,
    #[serde(default)]
    pub explicit_max_ttl: u64,
    #[serde(default)]
    pub token_ttl: u64,
    #[serde(default)]
    pub path_suffix: String,
    #[serde(default)]
    pub token_type: String,
    #[serde(default)]
    pub token_no_default_policy: bool,
}

fn yes() -> bool {
    true
}

impl TokenRole {
    /// Apply the fields of a role write on top of `self`.
    pub fn update_from(&mut self, data: &Data) -> Result<()> {
        if let Some(v) = get_str_list(data, "allowed_policies")? {
            self.allowed_policies = v.into_iter().map(|p| p.to_lowercase()).collect();
        }
        if let Some(v) = get_str_list(data, "disallowed_policies")? {
            self.disallowed_policies = v.into_iter().map(|p| p.to_lowercase()).collect();
        }
        if let Some(v) = get_bool(data, "orphan")? {
            self.orphan = v;
        }
        if let Some(v) = get_duration(data, "token_period")?.or(get_duration(data, "period")?) {
            self.period = v;
        }
        if let Some(v) = get_bool(data, "renewable")? {
            self.renewable = v;
        }
        if let Some(v) = get_duration(data, "token_explicit_max_ttl")?
            .or(get_duration(data, "explicit_max_ttl")?)
        {
            self.explicit_max_ttl = v;
        }
        if let Some(v) = get_duration(data, "token_ttl")? {
            self.token_ttl = v;
        }
        if let Some(v) = get_str(data, "path_suffix")? {
            if v.contains("..") || v.contains('/') && v.starts_with('/') {
                return Err(LogicalError::InvalidRequest("invalid path_suffix".into()));
            }
            self.path_suffix = v;
        }
        if let Some(v) = get_str(data, "token_type")? {
            match v.as_str() {
                "service" | "batch" | "default-service" | "default-batch" | "default" => {
                    self.token_type = v
                }
                _ => {
                    return Err(LogicalError::InvalidRequest(format!(
                        "invalid token_type {v:?}"
                    )))
                }
            }
        }
        if let Some(v) = get_bool(data, "token_no_default_policy")? {
            self.token_no_default_policy = v;
        }
        Ok(())
    }

    pub fn to_data(&self) -> Data {
        let mut d = Data::new();
        d.insert("name".into(), json!(self.name));
        d.insert("allowed_policies".into(), json!(self.allowed_policies));
        d.insert(
            "disallowed_policies".into(),
            json!(self.disallowed_policies),
        );
        d.insert("orphan".into(), json!(self.orphan));
        d.insert("period".into(), json!(self.period));
        d.insert("token_period".into(), json!(self.period));
        d.insert("renewable".into(), json!(self.renewable));
        d.insert("explicit_max_ttl".into(), json!(self.explicit_max_ttl));
        d.insert(
            "token_explicit_max_ttl".into(),
            json!(self.explicit_max_ttl),
        );
        d.insert("token_ttl".into(), json!(self.token_ttl));
        d.insert("path_suffix".into(), json!(self.path_suffix));
        let tt = if self.token_type.is_empty() {
            "default-service"
        } else {
            &self.token_type
        };
        d.insert("token_type".into(), json!(tt));
        d.insert(
            "token_no_default_policy".into(),
            json!(self.token_no_default_policy),
        );
        d
    }
}
