//! The mount's salt: a random key, stored in the mount's own storage (so it replicates with
//! the mount), under which role ids, secret ids and accessors are HMAC-ed before they become
//! storage keys.

use std::sync::LazyLock;

use bunker_sdk::{LogicalError, Result, StorageView};
use hmac::Mac;
use zeroize::Zeroizing;

const SALT_KEY: &str = "salt";

/// Serialises the creation of salts (once per mount).
static CREATE_LOCK: LazyLock<tokio::sync::Mutex<()>> =
    LazyLock::new(|| tokio::sync::Mutex::new(()));

/// The mount's salt, created on first use.
pub(crate) async fn mount_salt(storage: &StorageView) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(salt) = storage.get(SALT_KEY).await? {
        return Ok(Zeroizing::new(salt));
    }
    let _guard = CREATE_LOCK.lock().await;
    if let Some(salt) = storage.get(SALT_KEY).await? {
        return Ok(Zeroizing::new(salt));
    }
    let mut salt = Zeroizing::new(vec![0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, salt.as_mut_slice());
    storage.put(SALT_KEY, &salt).await?;
    Ok(salt)
}

/// HMAC-SHA256 of `value` under `salt`, hex: the storage key of a secret value.
pub(crate) fn salted(salt: &[u8], value: &str) -> Result<String> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(salt)
        .map_err(|_| LogicalError::Internal("invalid mount salt".into()))?;
    mac.update(value.as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_salt_per_mount_and_stable() {
        let storage = crate::test_support::view("logical/x/").await;
        let a = mount_salt(&storage).await.unwrap();
        let b = mount_salt(&storage).await.unwrap();
        assert_eq!(a, b);
        assert_ne!(salted(&a, "id").unwrap(), salted(&a, "id2").unwrap());
        let other = storage.sub_view("../y/");
        assert_ne!(*mount_salt(&other).await.unwrap(), *a);
    }
}
