//! Seal lifecycle endpoints: init, seal-status, unseal, seal, rotate, key-status.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::core::{seal_err, Core};
use crate::logical::fields::{get_bool, get_str, get_u64, ignore_unknown};
use crate::logical::{Data, LogicalError, Operation, Request, Response, Result};
use crate::time_util::rfc3339;
use bunker_sdk::{expect_op, WRITE};

pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

impl Core {
    pub(crate) async fn sys_init(&self, req: &Request) -> Result<Response> {
        match req.operation {
            Operation::Read => Ok(Response::raw(
                200,
                json!({"initialized": self.is_initialized().await?}),
            )),
            Operation::Create | Operation::Update => {
                ignore_unknown(
                    &req.data,
                    &[
                        "secret_shares",
                        "secret_threshold",
                        "pgp_keys",
                        "root_token_pgp_key",
                        "stored_shares",
                        "recovery_shares",
                        "recovery_threshold",
                        "recovery_pgp_keys",
                    ],
                );
                if req.data.get("pgp_keys").is_some_and(|v| !v.is_null())
                    || get_str(&req.data, "root_token_pgp_key")?.is_some_and(|s| !s.is_empty())
                {
                    return Err(LogicalError::InvalidRequest(
                        "PGP-encrypted key shares are not supported".into(),
                    ));
                }
                let shares = small(get_u64(&req.data, "secret_shares")?, "secret_shares")?;
                let threshold = small(get_u64(&req.data, "secret_threshold")?, "secret_threshold")?;
                let (Some(shares), Some(threshold)) = (shares, threshold) else {
                    return Err(LogicalError::InvalidRequest(
                        "secret_shares and secret_threshold are required".into(),
                    ));
                };
                let out = self.initialize(shares, threshold, None).await?;
                let hex_keys: Vec<String> = out.keys.iter().map(|k| hex::encode(&k[..])).collect();
                let b64_keys: Vec<String> = out
                    .keys
                    .iter()
                    .map(|k| base64::engine::general_purpose::STANDARD.encode(&k[..]))
                    .collect();
                tracing::info!(shares, threshold, "vault initialized");
                Ok(Response::raw(
                    200,
                    json!({
                        "keys": hex_keys,
                        "keys_base64": b64_keys,
                        "root_token": out.root_token,
                    }),
                ))
            }
            _ => Err(LogicalError::UnsupportedOperation),
        }
    }

    pub(crate) async fn seal_status_body(&self) -> Result<Value> {
        let status = self.seal.status().await.map_err(seal_err)?;
        let mut body = json!({
            "type": "shamir",
            "initialized": status.initialized,
            "sealed": status.sealed,
            "t": status.threshold,
            "n": status.shares,
            "progress": status.progress,
            "nonce": status.nonce,
            "version": VERSION,
            "build_date": "",
            "migration": false,
            "recovery_seal": false,
            "storage_type": self.config.storage_type,
        });
        if !status.sealed {
            let info = self
                .cluster
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Value::Object(m) = &mut body {
                m.insert("cluster_name".into(), json!(info.cluster_name));
                m.insert("cluster_id".into(), json!(info.cluster_id));
            }
        }
        Ok(body)
    }

    pub(crate) async fn sys_seal_status(&self) -> Result<Response> {
        Ok(Response::raw(200, self.seal_status_body().await?))
    }

    pub(crate) async fn sys_unseal(&self, req: &Request) -> Result<Response> {
        expect_op(req.operation, WRITE)?;
        ignore_unknown(&req.data, &["key", "reset", "migrate"]);
        if !self.is_initialized().await? {
            return Err(LogicalError::InvalidRequest(
                "Vault is not initialized".into(),
            ));
        }
        if get_bool(&req.data, "reset")?.unwrap_or(false) {
            if !self.is_sealed() {
                return Err(LogicalError::InvalidRequest("vault is unsealed".into()));
            }
            self.seal.reset_unseal();
            return self.sys_seal_status().await;
        }
        let Some(key) = get_str(&req.data, "key")? else {
            return Err(LogicalError::InvalidRequest(
                "'key' must be specified in request body as JSON, or 'reset' set to true".into(),
            ));
        };
        if !self.is_sealed() {
            return self.sys_seal_status().await;
        }
        let share = bunker_seal::parse_key_share(&key).map_err(seal_err)?;
        self.submit_unseal_key(&share).await?;
        self.sys_seal_status().await
    }

    pub(crate) async fn sys_seal(&self, op: Operation) -> Result<Response> {
        expect_op(op, WRITE)?;
        self.seal_core();
        tracing::info!("vault is sealed");
        Ok(Response::empty())
    }

    pub(crate) async fn sys_rotate(&self, op: Operation) -> Result<Response> {
        expect_op(op, WRITE)?;
        let status = self.barrier.rotate().await?;
        tracing::info!(term = status.term, "barrier key rotated");
        Ok(Response::empty())
    }

    pub(crate) fn sys_key_status(&self, op: Operation) -> Result<Response> {
        expect_op(op, &[Operation::Read])?;
        let status = self.barrier.key_status()?;
        let mut data = Data::new();
        data.insert("term".into(), json!(status.term));
        data.insert(
            "install_time".into(),
            json!(rfc3339(status.install_time_unix)),
        );
        data.insert("encryptions".into(), json!(status.encryptions));
        Ok(Response::data(data))
    }

    pub(crate) fn sys_decode_token(&self, req: &Request) -> Result<Response> {
        expect_op(req.operation, WRITE)?;
        let encoded = get_str(&req.data, "encoded_token")?.unwrap_or_default();
        let otp = get_str(&req.data, "otp")?.unwrap_or_default();
        if encoded.is_empty() || otp.is_empty() {
            return Err(LogicalError::InvalidRequest(
                "encoded_token and otp are required".into(),
            ));
        }
        let token = bunker_seal::otp::decode_token(&encoded, &otp).map_err(seal_err)?;
        let mut data = Data::new();
        data.insert("token".into(), json!(token));
        Ok(Response::data(data))
    }
}

fn small(v: Option<u64>, name: &str) -> Result<Option<u8>> {
    v.map(|n| {
        u8::try_from(n)
            .map_err(|_| LogicalError::InvalidRequest(format!("{name} must be between 1 and 255")))
    })
    .transpose()
}
