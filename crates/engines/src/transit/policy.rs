//! The key ring of one named transit key (a "policy" in Vault's words) as it is stored.
//!
//! One record per key, `policy/<name>` in the mount's view (so under the barrier), holding
//! the settings and every live version's key material. Key material is held in
//! [`SecretBytes`], which zeroizes on drop, shows no bytes in `Debug`, and is written to and
//! read from JSON as base64 without an intermediate owned string.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bunker_sdk::{Data, LogicalError, Result};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// Version of the stored record layout.
pub(crate) const RECORD_FORMAT: u32 = 1;

/// Most versions a key ring may hold at once (`latest_version - min_available_version + 1`);
/// rotation past it is refused until old versions are trimmed. Keeps the record (read on every
/// request) bounded.
pub(crate) const MAX_LIVE_VERSIONS: u64 = 10_000;

/// The derivation recorded for `derived` keys (see `crypto::derive_key`).
pub(crate) const KDF_HKDF_SHA256: &str = "hkdf_sha256";

/// Key types, spelled as Vault spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum KeyType {
    #[serde(rename = "aes128-gcm96")]
    Aes128Gcm96,
    #[serde(rename = "aes256-gcm96")]
    Aes256Gcm96,
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
    #[serde(rename = "ed25519")]
    Ed25519,
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "ecdsa-p521")]
    EcdsaP521,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    #[serde(rename = "hmac")]
    Hmac,
}

impl KeyType {
    pub(crate) fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "aes128-gcm96" => KeyType::Aes128Gcm96,
            "aes256-gcm96" => KeyType::Aes256Gcm96,
            "chacha20-poly1305" => KeyType::ChaCha20Poly1305,
            "ed25519" => KeyType::Ed25519,
            "ecdsa-p256" => KeyType::EcdsaP256,
            "ecdsa-p384" => KeyType::EcdsaP384,
            "ecdsa-p521" => KeyType::EcdsaP521,
            "rsa-2048" => KeyType::Rsa2048,
            "rsa-3072" => KeyType::Rsa3072,
            "rsa-4096" => KeyType::Rsa4096,
            "hmac" => KeyType::Hmac,
            other => {
                return Err(LogicalError::InvalidRequest(format!(
                    "unknown key type {other:?}"
                )))
            }
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyType::Aes128Gcm96 => "aes128-gcm96",
            KeyType::Aes256Gcm96 => "aes256-gcm96",
            KeyType::ChaCha20Poly1305 => "chacha20-poly1305",
            KeyType::Ed25519 => "ed25519",
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::EcdsaP521 => "ecdsa-p521",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
            KeyType::Hmac => "hmac",
        }
    }

    /// A symmetric AEAD key (AES-GCM or ChaCha20-Poly1305).
    pub(crate) fn is_aead(self) -> bool {
        matches!(
            self,
            KeyType::Aes128Gcm96 | KeyType::Aes256Gcm96 | KeyType::ChaCha20Poly1305
        )
    }

    pub(crate) fn is_ecdsa(self) -> bool {
        matches!(
            self,
            KeyType::EcdsaP256 | KeyType::EcdsaP384 | KeyType::EcdsaP521
        )
    }

    pub(crate) fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096)
    }

    pub(crate) fn supports_encryption(self) -> bool {
        self.is_aead() || self.is_rsa()
    }

    pub(crate) fn supports_signing(self) -> bool {
        self == KeyType::Ed25519 || self.is_ecdsa() || self.is_rsa()
    }

    pub(crate) fn supports_derivation(self) -> bool {
        self.is_aead() || self == KeyType::Ed25519
    }

    /// Types whose read shows a public key per version rather than a creation time.
    pub(crate) fn is_asymmetric(self) -> bool {
        self.supports_signing()
    }
}

/// Secret bytes: zeroized on drop, redacted in `Debug`, base64 in JSON.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub(crate) fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        SecretBytes(bytes)
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Self {
        SecretBytes(Zeroizing::new(bytes.to_vec()))
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let encoded = Zeroizing::new(STANDARD.encode(self.0.as_slice()));
        serializer.serialize_str(&encoded)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Base64Visitor;
        impl Visitor<'_> for Base64Visitor {
            type Value = SecretBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("base64 key material")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<SecretBytes, E> {
                STANDARD
                    .decode(v)
                    .map(|b| SecretBytes(Zeroizing::new(b)))
                    .map_err(|_| E::custom("key material is not valid base64"))
            }
        }
        deserializer.deserialize_str(Base64Visitor)
    }
}

/// One version of a key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct KeyVersion {
    /// Unix seconds when the version was made.
    pub created_unix: u64,
    /// AEAD key, Ed25519 seed, or PKCS#8 DER of an ECDSA/RSA private key; empty for `hmac`.
    pub key: SecretBytes,
    /// The key of the `hmac` endpoint (every type has one; for `hmac` keys it is the key).
    pub hmac_key: SecretBytes,
    /// Ed25519: base64 of the 32-byte public key; ECDSA/RSA: PEM of the SubjectPublicKeyInfo.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
}

impl fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVersion")
            .field("created_unix", &self.created_unix)
            .finish_non_exhaustive()
    }
}

/// When a key was last backed up or restored (shown on read, as Vault does).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct BackupStamp {
    pub time: String,
    pub version: u64,
}

/// The stored key ring.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct KeyPolicy {
    pub format: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub derived: bool,
    /// Convergent encryption: the nonce is derived from the plaintext (see
    /// `crypto::convergent_nonce`), so equal inputs give equal ciphertexts.
    #[serde(default)]
    pub convergent_encryption: bool,
    #[serde(default)]
    pub kdf: String,
    pub exportable: bool,
    pub allow_plaintext_backup: bool,
    pub deletion_allowed: bool,
    pub auto_rotate_period_secs: u64,
    /// Size in bytes of an `hmac` key (0 for other types).
    #[serde(default)]
    pub key_size: u64,
    pub latest_version: u64,
    pub min_decryption_version: u64,
    pub min_encryption_version: u64,
    pub min_available_version: u64,
    pub versions: BTreeMap<u64, KeyVersion>,
    #[serde(default)]
    pub backup_info: Option<BackupStamp>,
    #[serde(default)]
    pub restore_info: Option<BackupStamp>,
}

impl fmt::Debug for KeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPolicy")
            .field("name", &self.name)
            .field("type", &self.key_type)
            .field("latest_version", &self.latest_version)
            .finish_non_exhaustive()
    }
}

impl KeyPolicy {
    /// One version of the ring; an error naming the version when it is absent (trimmed).
    pub(crate) fn version(&self, version: u64) -> Result<&KeyVersion> {
        self.versions.get(&version).ok_or_else(|| {
            LogicalError::InvalidRequest(format!("key version {version} is not available"))
        })
    }

    /// The version an encrypting operation uses: `requested` (0 = latest), checked against
    /// `min_encryption_version` and the latest version.
    pub(crate) fn encryption_version(&self, requested: u64) -> Result<u64> {
        if requested == 0 {
            return Ok(self.latest_version);
        }
        if requested > self.latest_version {
            return Err(LogicalError::InvalidRequest(
                "requested version for encryption is higher than the latest key version".into(),
            ));
        }
        if self.min_encryption_version > 0 && requested < self.min_encryption_version {
            return Err(LogicalError::InvalidRequest(
                "requested version for encryption is less than the minimum encryption key version"
                    .into(),
            ));
        }
        Ok(requested)
    }

    /// Check that a ciphertext, HMAC or signature of `version` may be used.
    pub(crate) fn check_decryption_version(&self, version: u64) -> Result<()> {
        if version > self.latest_version {
            return Err(LogicalError::InvalidRequest(
                "invalid ciphertext: version is too new".into(),
            ));
        }
        if version < self.min_decryption_version.max(1) {
            return Err(LogicalError::InvalidRequest(
                "ciphertext or signature version is disallowed by policy (too old)".into(),
            ));
        }
        Ok(())
    }

    /// Whether `auto_rotate_period` says the latest version is due for rotation at `now`.
    pub(crate) fn rotation_due(&self, now_unix: u64) -> bool {
        if self.auto_rotate_period_secs == 0 {
            return false;
        }
        self.versions
            .get(&self.latest_version)
            .map(|v| now_unix >= v.created_unix.saturating_add(self.auto_rotate_period_secs))
            .unwrap_or(false)
    }

    /// Vault's read response for the key.
    pub(crate) fn to_response_data(&self) -> Data {
        let mut keys = serde_json::Map::new();
        let first = self
            .min_decryption_version
            .max(self.min_available_version)
            .max(1);
        for (version, kv) in self.versions.range(first..) {
            let entry = if self.key_type.is_asymmetric() {
                // A derived key's public key depends on a context: Vault shows it empty.
                let public_key = if self.derived {
                    ""
                } else {
                    kv.public_key.as_str()
                };
                json!({
                    "creation_time": bunker_sdk::time_util::rfc3339(kv.created_unix),
                    "name": public_key_name(self.key_type),
                    "public_key": public_key,
                })
            } else {
                json!(kv.created_unix)
            };
            keys.insert(version.to_string(), entry);
        }
        let mut data = match json!({
            "name": self.name,
            "type": self.key_type.as_str(),
            "keys": keys,
            "derived": self.derived,
            "exportable": self.exportable,
            "allow_plaintext_backup": self.allow_plaintext_backup,
            "deletion_allowed": self.deletion_allowed,
            "latest_version": self.latest_version,
            "min_available_version": self.min_available_version,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "supports_encryption": self.key_type.supports_encryption(),
            "supports_decryption": self.key_type.supports_encryption(),
            "supports_derivation": self.key_type.supports_derivation(),
            "supports_signing": self.key_type.supports_signing(),
            "auto_rotate_period": self.auto_rotate_period_secs,
            "imported_key": false,
            "convergent_encryption": self.convergent_encryption,
        }) {
            Value::Object(m) => m,
            _ => Data::new(),
        };
        if self.derived {
            data.insert("kdf".into(), Value::String(self.kdf.clone()));
        }
        if self.key_type == KeyType::Hmac {
            data.insert("key_size".into(), json!(self.key_size));
        }
        if let Some(b) = &self.backup_info {
            data.insert("backup_info".into(), json!(b));
        }
        if let Some(r) = &self.restore_info {
            data.insert("restore_info".into(), json!(r));
        }
        data
    }
}

/// The `name` Vault shows beside an asymmetric public key.
fn public_key_name(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::Ed25519 => "ed25519",
        KeyType::EcdsaP256 => "P-256",
        KeyType::EcdsaP384 => "P-384",
        KeyType::EcdsaP521 => "P-521",
        KeyType::Rsa2048 => "rsa-2048",
        KeyType::Rsa3072 => "rsa-3072",
        KeyType::Rsa4096 => "rsa-4096",
        _ => "",
    }
}

/// Check a key name the way Vault's `GenericNameRegex` does: word characters, `-`, `.` and
/// `@` inside, a word character at both ends; at most 128 bytes.
pub(crate) fn validate_key_name(name: &str) -> Result<()> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let inner = |c: char| word(c) || matches!(c, '-' | '.' | '@');
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().next().is_some_and(word)
        && name.chars().last().is_some_and(word)
        && name.chars().all(inner);
    if ok {
        Ok(())
    } else {
        Err(LogicalError::InvalidRequest(format!(
            "invalid key name {name:?}"
        )))
    }
}
