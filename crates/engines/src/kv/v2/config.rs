//! `config`: mount-wide defaults for every key.

use bunker_sdk::{LogicalError, Operation, Response, Result};

use super::model::{config_data, load_config, CONFIG_KEY};
use super::KvV2;
use crate::params::{bool_field, duration_field, u64_field};
use crate::store::{encode_json, Call};

pub(super) async fn handle(kv: &KvV2, call: &Call<'_>) -> Result<Response> {
    match call.operation {
        Operation::Read => Ok(Response::data(config_data(&load_config(call.store).await?))),
        Operation::Create | Operation::Update => write(kv, call).await,
        _ => Err(LogicalError::UnsupportedOperation),
    }
}

/// Only the fields given change.
async fn write(kv: &KvV2, call: &Call<'_>) -> Result<Response> {
    let max_versions = u64_field(call.data, "max_versions")?;
    let cas_required = bool_field(call.data, "cas_required")?;
    let delete_after = duration_field(call.data, "delete_version_after")?;

    let _guard = kv.config_lock.lock().await;
    let mut config = load_config(call.store).await?;
    if let Some(n) = max_versions {
        config.max_versions = n;
    }
    if let Some(b) = cas_required {
        config.cas_required = b;
    }
    if let Some(secs) = delete_after {
        config.delete_version_after_secs = secs;
    }
    let bytes = encode_json(CONFIG_KEY, &config)?;
    call.store.put(CONFIG_KEY, &bytes).await?;
    Ok(Response::empty())
}
