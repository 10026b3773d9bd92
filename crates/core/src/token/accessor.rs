//! The accessor index: from a token's accessor to the storage id of its token.
//!
//! An entry lives at `sys/token/accessor/<storage id of the accessor>` (the same salted HMAC as
//! token ids, [`super::token_storage_id`]; plain SHA-256 in stores from before salts), and its
//! value, under the barrier, holds the accessor itself and the token's storage id, as Vault's
//! `accessorEntry` at `salt.SaltID(accessor)`. Storage keys are plaintext on disk, so an
//! accessor never is one; `auth/token/accessors` reads the accessors from the values.
//!
//! # Entries written before the index was salted
//!
//! Every store written before this change, salted or not, holds entries at
//! `sys/token/accessor/<accessor>` whose value is the token's storage id alone. They are read
//! where they lie, never migrated: a lookup that misses the salted key tries the accessor as
//! the key, and revocation deletes both keys. This is the simplest correct choice because
//! migrating would be a write at unseal, and unseal (`post_unseal`) also runs on DR secondaries
//! and after every replicated reload there, where the data is the primary's and must not be
//! written; a migration would also race with requests served while it runs. Such an entry
//! goes away with its token (revocation, expiry, tidy); until then that one accessor stays
//! visible as a storage key, as it was before.

use bunker_storage::Op;
use serde::{Deserialize, Serialize};

use super::{TokenEntry, TokenStore};
use crate::logical::{LogicalError, Result};
use crate::time_util::now_unix;

pub(super) const ACCESSOR_PREFIX: &str = "sys/token/accessor/";

/// The value of an accessor index entry (Vault's `accessorEntry`).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct AccessorEntry {
    accessor: String,
    /// The storage id of the token the accessor belongs to.
    id_hash: String,
}

/// What an accessor index value holds.
#[derive(Debug, PartialEq, Eq)]
enum IndexValue {
    /// Written under the storage id of the accessor.
    Entry(AccessorEntry),
    /// Written before salting, under the accessor itself: the token's storage id only.
    Legacy(String),
}

fn decode(value: &[u8]) -> Result<IndexValue> {
    let corrupt = || LogicalError::Internal("corrupt accessor index entry".into());
    if value.first() == Some(&b'{') {
        return serde_json::from_slice(value)
            .map(IndexValue::Entry)
            .map_err(|_| corrupt());
    }
    match std::str::from_utf8(value) {
        Ok(hash) if !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(IndexValue::Legacy(hash.to_owned()))
        }
        _ => Err(corrupt()),
    }
}

/// Longer than any accessor this store (24 characters) or Vault generates.
const MAX_ACCESSOR_LEN: usize = 256;

/// The key `accessor` has in the unsalted index, if it can be one (so also whether it can be an
/// accessor at all): accessors are generated base62, short and never contain `/`.
fn legacy_key(accessor: &str) -> Option<String> {
    (!accessor.is_empty() && accessor.len() <= MAX_ACCESSOR_LEN && !accessor.contains('/'))
        .then(|| format!("{ACCESSOR_PREFIX}{accessor}"))
}

impl TokenStore {
    fn accessor_key(&self, accessor: &str) -> String {
        format!("{ACCESSOR_PREFIX}{}", self.hash(accessor))
    }

    /// The write that indexes `entry` by its accessor (in the batch that creates the token).
    pub(super) fn accessor_index_put(&self, entry: &TokenEntry) -> Result<Op> {
        Ok(Op::Put {
            key: self.accessor_key(&entry.accessor),
            value: serde_json::to_vec(&AccessorEntry {
                accessor: entry.accessor.clone(),
                id_hash: entry.id_hash.clone(),
            })?,
        })
    }

    /// The deletes that drop `accessor` from the index, wherever it was written.
    pub(super) fn accessor_index_deletes(&self, accessor: &str) -> Vec<Op> {
        if accessor.is_empty() {
            return Vec::new();
        }
        std::iter::once(self.accessor_key(accessor))
            .chain(legacy_key(accessor))
            .map(|key| Op::Delete { key })
            .collect()
    }

    /// The storage id of the token `accessor` belongs to, if it is indexed.
    async fn accessor_target(&self, accessor: &str) -> Result<Option<String>> {
        let Some(legacy) = legacy_key(accessor) else {
            return Ok(None);
        };
        if let Some(value) = self.barrier.get(&self.accessor_key(accessor)).await? {
            return match decode(&value)? {
                IndexValue::Entry(e) if e.accessor == accessor => Ok(Some(e.id_hash)),
                _ => Err(LogicalError::Internal(
                    "corrupt accessor index entry".into(),
                )),
            };
        }
        match self.barrier.get(&legacy).await? {
            Some(value) => match decode(&value)? {
                IndexValue::Legacy(hash) => Ok(Some(hash)),
                // A salted entry's key given as an accessor: storage ids are not accessors.
                IndexValue::Entry(_) => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// The live token of `accessor`; an expired one is revoked and reported as absent.
    pub async fn lookup_accessor(&self, accessor: &str) -> Result<Option<TokenEntry>> {
        let Some(hash) = self.accessor_target(accessor).await? else {
            return Ok(None);
        };
        match self.get_by_hash(&hash).await? {
            Some(e) if e.is_expired(now_unix()) => {
                self.revoke_tree(&e.id_hash).await?;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    /// All accessors (the sudo-only `auth/token/accessors` LIST), read from the index entries'
    /// values as Vault does, and a warning for each entry that cannot be decoded.
    pub async fn accessors(&self) -> Result<(Vec<String>, Vec<String>)> {
        let mut accessors = Vec::new();
        let mut warnings = Vec::new();
        for key in self.barrier.list(ACCESSOR_PREFIX).await? {
            let Some(value) = self.barrier.get(&format!("{ACCESSOR_PREFIX}{key}")).await? else {
                continue; // revoked since the LIST
            };
            match decode(&value) {
                Ok(IndexValue::Entry(e)) => accessors.push(e.accessor),
                Ok(IndexValue::Legacy(_)) => accessors.push(key),
                Err(_) => warnings
                    .push("found an accessor entry that could not be successfully decoded".into()),
            }
        }
        Ok((accessors, warnings))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bunker_barrier::Barrier;
    use bunker_storage::{Backend, InmemBackend};

    use super::*;
    use crate::token::TokenType;

    async fn store(salted: bool) -> (TokenStore, Arc<Barrier>, Arc<InmemBackend>) {
        let backend = Arc::new(InmemBackend::new());
        let barrier = Arc::new(Barrier::new(backend.clone()));
        let root = Barrier::generate_root_key();
        barrier.initialize(&root).await.unwrap();
        barrier.unseal(&root).await.unwrap();
        let tokens = TokenStore::new(barrier.clone(), crate::mounts::SystemTtls::default());
        if salted {
            tokens.create_salt().await.unwrap();
        }
        (tokens, barrier, backend)
    }

    async fn service_token(tokens: &TokenStore) -> TokenEntry {
        let entry = TokenEntry {
            policies: vec!["default".into()],
            token_type: TokenType::Service,
            ..Default::default()
        };
        tokens.create(entry, None).await.unwrap().1
    }

    async fn raw_keys(backend: &InmemBackend) -> Vec<String> {
        backend
            .scan("", None, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// Rewrite `entry`'s index entry as a store from before salting had it.
    async fn make_legacy(tokens: &TokenStore, barrier: &Barrier, entry: &TokenEntry) {
        barrier
            .batch(tokens.accessor_index_deletes(&entry.accessor))
            .await
            .unwrap();
        barrier
            .put(
                &format!("{ACCESSOR_PREFIX}{}", entry.accessor),
                entry.id_hash.as_bytes(),
            )
            .await
            .unwrap();
    }

    /// A request's caller shares the cached entry: never changed in place, and a lookup after
    /// a spent use or a revocation sees the stored state, not the shared copy.
    #[tokio::test]
    async fn a_shared_entry_follows_what_is_stored() {
        let (tokens, _, _) = store(true).await;
        let entry = TokenEntry {
            policies: vec!["default".into()],
            token_type: TokenType::Service,
            num_uses: 2,
            ..Default::default()
        };
        let (token, _) = tokens.create(entry, None).await.unwrap();
        let mut shared = tokens.lookup_shared(&token).await.unwrap().unwrap();
        let before = tokens.lookup_shared(&token).await.unwrap().unwrap();
        assert!(
            Arc::ptr_eq(&shared, &before),
            "a lookup shares the cached entry"
        );

        assert!(!tokens.use_token(&mut shared).await.unwrap());
        assert_eq!(shared.num_uses, 1);
        assert_eq!(
            before.num_uses, 2,
            "the shared entry was not changed in place"
        );
        let after = tokens.lookup_shared(&token).await.unwrap().unwrap();
        assert_eq!(after.num_uses, 1);

        tokens.revoke_tree(&shared.id_hash).await.unwrap();
        assert!(tokens.lookup_shared(&token).await.unwrap().is_none());
        assert!(tokens.lookup(&token).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn accessors_are_not_storage_keys_and_still_resolve() {
        for salted in [true, false] {
            let (tokens, _, backend) = store(salted).await;
            let entry = service_token(&tokens).await;
            assert_eq!(entry.accessor.len(), 24);
            let keys = raw_keys(&backend).await;
            assert!(
                keys.iter()
                    .any(|k| k == &format!("{ACCESSOR_PREFIX}{}", tokens.hash(&entry.accessor))),
                "salted={salted}: {keys:?}"
            );
            assert!(
                !keys.iter().any(|k| k.contains(&entry.accessor)),
                "salted={salted}: an accessor is a storage key: {keys:?}"
            );
            let found = tokens.lookup_accessor(&entry.accessor).await.unwrap();
            assert_eq!(found.map(|e| e.id_hash), Some(entry.id_hash.clone()));
            assert_eq!(
                tokens.accessors().await.unwrap(),
                (vec![entry.accessor.clone()], vec![])
            );
            tokens.revoke_tree(&entry.id_hash).await.unwrap();
            assert!(tokens
                .lookup_accessor(&entry.accessor)
                .await
                .unwrap()
                .is_none());
            assert_eq!(tokens.accessors().await.unwrap(), (vec![], vec![]));
            assert!(
                !raw_keys(&backend)
                    .await
                    .iter()
                    .any(|k| k.starts_with(ACCESSOR_PREFIX)),
                "salted={salted}: revocation leaves an index entry"
            );
        }
    }

    #[tokio::test]
    async fn entries_written_before_salting_are_found_listed_and_revoked() {
        for salted in [true, false] {
            let (tokens, barrier, backend) = store(salted).await;
            let old = service_token(&tokens).await;
            make_legacy(&tokens, &barrier, &old).await;
            let new = service_token(&tokens).await;
            let found = tokens.lookup_accessor(&old.accessor).await.unwrap();
            assert_eq!(found.map(|e| e.id_hash), Some(old.id_hash.clone()));
            let (mut listed, warnings) = tokens.accessors().await.unwrap();
            listed.sort();
            let mut want = vec![old.accessor.clone(), new.accessor.clone()];
            want.sort();
            assert_eq!((listed, warnings), (want, vec![]), "salted={salted}");
            tokens.revoke_tree(&old.id_hash).await.unwrap();
            assert!(tokens
                .lookup_accessor(&old.accessor)
                .await
                .unwrap()
                .is_none());
            assert!(
                !raw_keys(&backend)
                    .await
                    .iter()
                    .any(|k| k.contains(&old.accessor)),
                "salted={salted}: revocation leaves the old index entry"
            );
            assert_eq!(
                tokens.accessors().await.unwrap(),
                (vec![new.accessor.clone()], vec![])
            );
        }
    }

    #[tokio::test]
    async fn a_storage_id_is_not_an_accessor() {
        let (tokens, _, _) = store(true).await;
        let entry = service_token(&tokens).await;
        let storage_id = tokens.hash(&entry.accessor);
        assert!(tokens.lookup_accessor(&storage_id).await.unwrap().is_none());
        assert!(tokens
            .lookup_accessor(&entry.id_hash)
            .await
            .unwrap()
            .is_none());
        assert!(tokens.lookup_accessor("").await.unwrap().is_none());
        assert!(tokens.lookup_accessor("a/b").await.unwrap().is_none());
        let long = "a".repeat(MAX_ACCESSOR_LEN + 1);
        assert!(tokens.lookup_accessor(&long).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_undecodable_entry_is_a_warning_in_the_list() {
        let (tokens, barrier, _) = store(true).await;
        let entry = service_token(&tokens).await;
        barrier
            .put(&format!("{ACCESSOR_PREFIX}garbage"), b"not an entry")
            .await
            .unwrap();
        let (listed, warnings) = tokens.accessors().await.unwrap();
        assert_eq!(listed, vec![entry.accessor]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(!warnings[0].contains("garbage"), "{warnings:?}");
    }

    #[test]
    fn index_values_decode() {
        let entry = br#"{"accessor":"abc","id_hash":"00ff"}"#;
        assert_eq!(
            decode(entry).unwrap(),
            IndexValue::Entry(AccessorEntry {
                accessor: "abc".into(),
                id_hash: "00ff".into()
            })
        );
        assert_eq!(
            decode(b"00ffAB").unwrap(),
            IndexValue::Legacy("00ffAB".into())
        );
        assert!(decode(b"").is_err());
        assert!(decode(b"{\"accessor\":1}").is_err());
        assert!(decode(b"not hex").is_err());
        assert!(decode(&[0xff, 0xfe]).is_err());
    }
}
