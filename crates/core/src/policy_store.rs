//! ACL policy storage. Policies live in the barrier at `sys/policy/<name>`; parsed policies are
//! cached and the cache is dropped on every write and on seal.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bunker_barrier::Barrier;
use bunker_policy::{Acl, Policy};
use serde::{Deserialize, Serialize};

use crate::logical::{LogicalError, Result};

const POLICY_PREFIX: &str = "sys/policy/";
pub const ROOT_POLICY: &str = "root";
pub const DEFAULT_POLICY: &str = "default";
pub const RESPONSE_WRAPPING_POLICY: &str = "response-wrapping";

#[derive(Serialize, Deserialize)]
struct StoredPolicy {
    name: String,
    policy: String,
}

pub struct PolicyStore {
    barrier: Arc<Barrier>,
    cache: RwLock<HashMap<String, Policy>>,
}

/// A policy name as Vault keeps it: trimmed and lowercased. Vault accepts any other character
/// (`['testpolicy']`, `a/b`), so Bunker does too; a name with `/` is stored below a folder of
/// the policy prefix and listed with its full name.
pub fn normalize_policy_name(name: &str) -> Result<String> {
    let name = name.trim().to_lowercase();
    if name.is_empty() {
        return Err(LogicalError::InvalidRequest("policy name missing".into()));
    }
    if name.split('/').any(str::is_empty) {
        return Err(LogicalError::InvalidRequest(format!(
            "invalid policy name {name:?}: empty path segment"
        )));
    }
    Ok(name)
}

impl PolicyStore {
    pub fn new(barrier: Arc<Barrier>) -> Self {
        PolicyStore {
            barrier,
            cache: RwLock::new(HashMap::new()),
        }
    }

    // Every change to the cache is one map operation under the lock, so a poisoned lock still
    // guards a consistent map.
    fn cache_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Policy>> {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn clear_cache(&self) {
        self.cache_mut().clear();
    }

    /// Create the `default` policy if it does not exist (done at init).
    pub async fn setup_defaults(&self) -> Result<()> {
        if self.get_raw(DEFAULT_POLICY).await?.is_none() {
            self.put(DEFAULT_POLICY, bunker_policy::DEFAULT_POLICY)
                .await?;
        }
        Ok(())
    }

    pub async fn get_raw(&self, name: &str) -> Result<Option<String>> {
        if name == RESPONSE_WRAPPING_POLICY {
            return Ok(Some(bunker_policy::RESPONSE_WRAPPING_POLICY.to_owned()));
        }
        let stored: Option<StoredPolicy> =
            match self.barrier.get(&format!("{POLICY_PREFIX}{name}")).await? {
                None => None,
                Some(bytes) => Some(serde_json::from_slice(&bytes)?),
            };
        Ok(stored.map(|p| p.policy))
    }

    pub async fn get(&self, name: &str) -> Result<Option<Policy>> {
        let cached = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned();
        if let Some(p) = cached {
            return Ok(Some(p));
        }
        let Some(raw) = self.get_raw(name).await? else {
            return Ok(None);
        };
        let policy = Policy::parse(name, &raw)
            .map_err(|e| LogicalError::Internal(format!("stored policy {name:?}: {e}")))?;
        self.cache_mut().insert(name.to_owned(), policy.clone());
        Ok(Some(policy))
    }

    pub async fn put(&self, name: &str, raw: &str) -> Result<()> {
        let name = normalize_policy_name(name)?;
        if name == ROOT_POLICY || name == RESPONSE_WRAPPING_POLICY {
            return Err(LogicalError::InvalidRequest(format!(
                "cannot update {name} policy"
            )));
        }
        Policy::parse(&name, raw).map_err(|e| LogicalError::InvalidRequest(e.to_string()))?;
        let stored = StoredPolicy {
            name: name.clone(),
            policy: raw.to_owned(),
        };
        self.barrier
            .put(
                &format!("{POLICY_PREFIX}{name}"),
                &serde_json::to_vec(&stored)?,
            )
            .await?;
        self.cache_mut().remove(&name);
        Ok(())
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        let name = normalize_policy_name(name)?;
        if name == ROOT_POLICY || name == DEFAULT_POLICY || name == RESPONSE_WRAPPING_POLICY {
            return Err(LogicalError::InvalidRequest(format!(
                "cannot delete {name} policy"
            )));
        }
        self.barrier
            .delete(&format!("{POLICY_PREFIX}{name}"))
            .await?;
        self.cache_mut().remove(&name);
        Ok(())
    }

    /// Every stored policy name (names with `/` are collected from their folders, as Vault's
    /// `CollectKeys`), plus `root`.
    pub async fn list(&self) -> Result<Vec<String>> {
        let mut names = vec![ROOT_POLICY.to_owned()];
        let mut folders = vec![String::new()];
        while let Some(folder) = folders.pop() {
            for child in self
                .barrier
                .list(&format!("{POLICY_PREFIX}{folder}"))
                .await?
            {
                let full = format!("{folder}{child}");
                if full.ends_with('/') {
                    folders.push(full);
                } else {
                    names.push(full);
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The ACL for a set of policy names; unknown names are skipped, as Vault does.
    pub async fn acl(&self, names: &[String]) -> Result<Acl> {
        if names.iter().any(|n| n == ROOT_POLICY) {
            return Ok(Acl::root());
        }
        let mut policies = Vec::with_capacity(names.len());
        for name in names {
            if let Some(p) = self.get(name).await? {
                policies.push(p);
            }
        }
        Ok(Acl::new(&policies))
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_policy_name;

    #[test]
    fn names_are_trimmed_and_lowercased_and_may_hold_any_character() {
        for (given, kept) in [
            ("Dev", "dev"),
            (" ['TestPolicy'] ", "['testpolicy']"),
            ("a b!$%", "a b!$%"),
            ("team/app", "team/app"),
        ] {
            assert_eq!(normalize_policy_name(given).ok().as_deref(), Some(kept));
        }
        for refused in ["", "   ", "a//b", "/a", "a/"] {
            assert!(normalize_policy_name(refused).is_err(), "{refused:?}");
        }
    }
}
