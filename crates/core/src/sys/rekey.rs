//! `sys/rekey/{init,update,verify}`: replace the unseal key shares (Vault's barrier rekey).
//!
//! Like Vault these endpoints take no token: a quorum of key shares is the authority. They
//! answer only while unsealed (503 otherwise), are refused on a DR secondary (which follows
//! its primary's seal), and are not audited, as `sys/unseal` is not. The state machine lives in
//! the seal (`bunker_seal::Seal::rekey_*`); this file maps fields and Vault's response shapes.
//! PGP-encrypted shares and their backup are not supported.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::core::{seal_err, Core};
use crate::logical::fields::{get_bool, get_str, get_u64, ignore_unknown};
use crate::logical::{LogicalError, Operation, Request, Response, Result};
use crate::replication_hook::DrMode;
use bunker_sdk::{expect_op, WRITE};
use bunker_seal::{RekeyStatus, RekeyUpdate, VerificationStatus, VerifyUpdate};

impl Core {
    pub(crate) async fn sys_rekey_init(&self, req: &Request) -> Result<Response> {
        self.refuse_rekey_on_dr_secondary()?;
        match req.operation {
            Operation::Read => {
                let status = self.seal.rekey_status().await.map_err(seal_err)?;
                Ok(Response::raw(200, rekey_status_body(&status)))
            }
            Operation::Create | Operation::Update => {
                let request = rekey_request(req)?;
                let status = self.seal.rekey_init(&request).await.map_err(seal_err)?;
                Ok(Response::raw(200, rekey_status_body(&status)))
            }
            Operation::Delete => {
                self.seal.rekey_cancel().await.map_err(seal_err)?;
                Ok(Response::empty())
            }
            _ => Err(LogicalError::UnsupportedOperation),
        }
    }

    pub(crate) async fn sys_rekey_update(&self, req: &Request) -> Result<Response> {
        expect_op(req.operation, WRITE)?;
        self.refuse_rekey_on_dr_secondary()?;
        let (share, nonce) = share_and_nonce(req)?;
        match self
            .seal
            .rekey_update(&share, &nonce)
            .await
            .map_err(seal_err)?
        {
            RekeyUpdate::Pending(status) => Ok(Response::raw(200, rekey_status_body(&status))),
            RekeyUpdate::Complete(result) => {
                let hex_keys: Vec<String> = result.keys.iter().map(hex::encode).collect();
                let b64_keys: Vec<String> = result
                    .keys
                    .iter()
                    .map(|k| base64::engine::general_purpose::STANDARD.encode(k.as_slice()))
                    .collect();
                let mut body = json!({
                    "nonce": result.nonce,
                    "complete": true,
                    "keys": hex_keys,
                    "keys_base64": b64_keys,
                    "pgp_fingerprints": null,
                    "backup": false,
                    "verification_required": result.verification_required,
                });
                insert_nonempty(&mut body, "verification_nonce", &result.verification_nonce);
                Ok(Response::raw(200, body))
            }
        }
    }

    pub(crate) async fn sys_rekey_verify(&self, req: &Request) -> Result<Response> {
        self.refuse_rekey_on_dr_secondary()?;
        let status = match req.operation {
            Operation::Read => self.seal.rekey_verify_status().await,
            Operation::Delete => self.seal.rekey_verify_restart().await,
            Operation::Create | Operation::Update => {
                let (share, nonce) = share_and_nonce(req)?;
                match self
                    .seal
                    .rekey_verify(&share, &nonce)
                    .await
                    .map_err(seal_err)?
                {
                    VerifyUpdate::Pending(status) => Ok(status),
                    VerifyUpdate::Complete { nonce } => {
                        return Ok(Response::raw(
                            200,
                            json!({"nonce": nonce, "complete": true}),
                        ))
                    }
                }
            }
            _ => return Err(LogicalError::UnsupportedOperation),
        };
        let status = status.map_err(seal_err)?;
        Ok(Response::raw(200, verification_status_body(&status)))
    }

    /// A DR secondary's seal is its primary's: rekey the primary, the result replicates.
    fn refuse_rekey_on_dr_secondary(&self) -> Result<()> {
        if self.dr_mode() == DrMode::Secondary {
            return Err(LogicalError::DrSecondary);
        }
        Ok(())
    }
}

/// The fields of `PUT sys/rekey/init`.
fn rekey_request(req: &Request) -> Result<bunker_seal::RekeyRequest> {
    ignore_unknown(
        &req.data,
        &[
            "secret_shares",
            "secret_threshold",
            "stored_shares",
            "pgp_keys",
            "backup",
            "require_verification",
        ],
    );
    let pgp_keys_given = match req.data.get("pgp_keys") {
        None | Some(Value::Null) => false,
        Some(Value::Array(keys)) => !keys.is_empty(),
        Some(Value::String(keys)) => !keys.is_empty(),
        Some(_) => true,
    };
    if pgp_keys_given {
        return Err(LogicalError::InvalidRequest(
            "PGP-encrypted key shares are not supported".into(),
        ));
    }
    if get_bool(&req.data, "backup")?.unwrap_or(false) {
        return Err(LogicalError::InvalidRequest(
            "cannot request a backup of the new keys without providing PGP keys for encryption"
                .into(),
        ));
    }
    // Shamir seals ignore stored_shares (Vault forces it to 1); only its type is checked.
    get_u64(&req.data, "stored_shares")?;
    Ok(bunker_seal::RekeyRequest {
        secret_shares: share_count(get_u64(&req.data, "secret_shares")?, "shares")?,
        secret_threshold: share_count(get_u64(&req.data, "secret_threshold")?, "threshold")?,
        require_verification: get_bool(&req.data, "require_verification")?.unwrap_or(false),
    })
}

/// A share count or threshold; absent is 0, which the seal's validation refuses.
fn share_count(value: Option<u64>, what: &str) -> Result<u8> {
    u8::try_from(value.unwrap_or(0)).map_err(|_| {
        LogicalError::InvalidRequest(format!(
            "invalid rekey seal configuration: {what} must be less than 256"
        ))
    })
}

/// The `key` (hex or base64) and `nonce` of an update or verify request.
fn share_and_nonce(req: &Request) -> Result<(zeroize::Zeroizing<Vec<u8>>, String)> {
    ignore_unknown(&req.data, &["key", "nonce"]);
    let key = get_str(&req.data, "key")?
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            LogicalError::InvalidRequest("'key' must be specified in request body as JSON".into())
        })?;
    let key = zeroize::Zeroizing::new(key);
    let share = bunker_seal::parse_key_share(&key).map_err(seal_err)?;
    Ok((share, get_str(&req.data, "nonce")?.unwrap_or_default()))
}

fn insert_nonempty(body: &mut Value, name: &str, value: &str) {
    if let (Value::Object(map), false) = (body, value.is_empty()) {
        map.insert(name.to_owned(), json!(value));
    }
}

/// Vault's `RekeyStatusResponse`.
fn rekey_status_body(status: &RekeyStatus) -> Value {
    let mut body = json!({
        "started": status.started,
        "nonce": status.nonce,
        "t": status.new_threshold,
        "n": status.new_shares,
        "progress": status.progress,
        "required": status.required,
        "pgp_fingerprints": null,
        "backup": false,
        "verification_required": status.verification_required,
    });
    insert_nonempty(&mut body, "verification_nonce", &status.verification_nonce);
    body
}

/// Vault's `RekeyVerificationStatusResponse`.
fn verification_status_body(status: &VerificationStatus) -> Value {
    json!({
        "started": status.started,
        "nonce": status.nonce,
        "t": status.new_threshold,
        "n": status.new_shares,
        "progress": status.progress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bodies_have_vaults_fields() {
        let idle = rekey_status_body(&RekeyStatus {
            required: 3,
            ..RekeyStatus::default()
        });
        assert_eq!(
            idle,
            json!({
                "started": false, "nonce": "", "t": 0, "n": 0, "progress": 0, "required": 3,
                "pgp_fingerprints": null, "backup": false, "verification_required": false,
            })
        );
        let waiting = rekey_status_body(&RekeyStatus {
            started: true,
            verification_required: true,
            verification_nonce: "v".into(),
            ..RekeyStatus::default()
        });
        assert_eq!(waiting["verification_nonce"], json!("v"));
    }
}
