//! Getting an activation bundle: decrypted locally when it was encrypted to this cluster's
//! `generate-public-key` key, otherwise unwrapped at the primary's API. The unwrap is the only
//! network call of the control plane, so it runs outside the state lock (see `control`).

use std::time::Duration;

use bunker_sdk::fields::get_str;
use bunker_sdk::{LogicalError, Request, Result};
use serde_json::{json, Value};

use super::Inner;
use crate::activation::{ActivationToken, Bundle};

/// Whole unwrap request, connect to answer.
const UNWRAP_TIMEOUT: Duration = Duration::from_secs(30);
/// The primary's answer is a small JSON document; anything larger is refused unread.
const MAX_UNWRAP_RESPONSE_BYTES: usize = 256 * 1024;
/// `ca_file` and each file of `ca_path`: certificates, not data.
const MAX_CA_FILE_BYTES: u64 = 256 * 1024;
const MAX_CA_PATH_FILES: usize = 64;
/// One message for every way a CA file can fail, so the answer does not tell whether a file
/// exists or what it holds.
const CA_LOAD_ERROR: &str =
    "could not load PEM CA certificates from ca_file/ca_path (readable PEM certificate files of at most 256 KiB)";

fn bad(msg: impl Into<String>) -> LogicalError {
    LogicalError::InvalidRequest(msg.into())
}

/// The activation token of `req` (`token`), required.
fn token_param(req: &Request) -> Result<String> {
    get_str(&req.data, "token")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("missing required parameter \"token\""))
}

/// Decrypt an activation token encrypted to our `generate-public-key` key; `None` when the
/// token is a wrapped one. The private key is used once.
pub(crate) fn open_sealed(inner: &Inner, req: &Request) -> Result<Option<Bundle>> {
    let token = token_param(req)?;
    if !token.starts_with(crate::sealed_activation::PREFIX) {
        return Ok(None);
    }
    let mut guard = inner
        .activation_key
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let private = guard.as_ref().ok_or_else(|| {
        bad("no secondary public key was generated on this cluster (or it was used)")
    })?;
    let bundle = crate::sealed_activation::open(&token, private, crate::messages::now_ms() / 1000)?;
    *guard = None;
    Ok(Some(bundle))
}

/// Read one CA file without blocking the runtime and without reading more than the limit.
async fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|_| bad(CA_LOAD_ERROR))?;
    let meta = file.metadata().await.map_err(|_| bad(CA_LOAD_ERROR))?;
    if !meta.is_file() {
        return Err(bad(CA_LOAD_ERROR));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CA_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|_| bad(CA_LOAD_ERROR))?;
    if bytes.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(bad(CA_LOAD_ERROR));
    }
    Ok(bytes)
}

/// The CA certificates of `ca_file` and `ca_path`, PEM only; empty when neither is set.
async fn load_cas(req: &Request) -> Result<Vec<reqwest::Certificate>> {
    let mut files = Vec::new();
    if let Some(file) = get_str(&req.data, "ca_file")?.filter(|s| !s.is_empty()) {
        files.push(std::path::PathBuf::from(file));
    }
    if let Some(dir) = get_str(&req.data, "ca_path")?.filter(|s| !s.is_empty()) {
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(|_| bad(CA_LOAD_ERROR))?;
        while let Some(entry) = entries.next_entry().await.map_err(|_| bad(CA_LOAD_ERROR))? {
            if files.len() > MAX_CA_PATH_FILES {
                return Err(bad(CA_LOAD_ERROR));
            }
            if entry.file_type().await.is_ok_and(|t| t.is_file()) {
                files.push(entry.path());
            }
        }
    }
    let mut certs = Vec::new();
    for file in files {
        let pem = read_ca_file(&file).await?;
        if !pem.starts_with(b"-----BEGIN CERTIFICATE-----")
            && !String::from_utf8_lossy(&pem)
                .trim_start()
                .starts_with("-----BEGIN CERTIFICATE-----")
        {
            return Err(bad(CA_LOAD_ERROR));
        }
        let parsed = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| bad(CA_LOAD_ERROR))?;
        if parsed.is_empty() {
            return Err(bad(CA_LOAD_ERROR));
        }
        certs.extend(parsed);
    }
    Ok(certs)
}

fn is_loopback_http(addr: &str) -> bool {
    let rest = addr.trim().strip_prefix("http://").unwrap_or_default();
    let host_port = rest.split('/').next().unwrap_or_default();
    let host = match host_port.rsplit_once(':') {
        Some((h, _)) => h,
        None => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Unwrap a wrapped activation token at the primary's API. Over `http://` the wrapping token
/// and the bundle would cross the network in clear text: refused unless the operator allowed
/// it for a loopback test setup (`replication { activation_allow_http = true }`).
pub(crate) async fn unwrap_at_primary(inner: &Inner, req: &Request) -> Result<Bundle> {
    let token = token_param(req)?;
    let activation = ActivationToken::decode(&token)?;
    let addr = get_str(&req.data, "primary_api_addr")?
        .filter(|s| !s.is_empty())
        .unwrap_or(activation.addr);
    if !addr.starts_with("https://") {
        let allowed = inner.config.activation_allow_http && is_loopback_http(&addr);
        if !allowed {
            return Err(bad(format!(
                "refusing to unwrap the activation token at {addr:?}: only https:// is accepted, \
                 because the wrapping token and the bundle would cross the network in clear text \
                 (a loopback test setup may set activation_allow_http = true in the replication \
                 block of this cluster's configuration)"
            )));
        }
    }
    let cas = load_cas(req).await?;
    let mut builder = reqwest::Client::builder()
        .timeout(UNWRAP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if !cas.is_empty() {
        // Trust only the CA the operator named, not the system roots beside it.
        builder = builder.tls_certs_only(cas);
    }
    let client = builder
        .build()
        .map_err(|e| LogicalError::Internal(format!("building HTTP client: {e}")))?;
    let url = format!("{}/v1/sys/wrapping/unwrap", addr.trim_end_matches('/'));
    let mut resp = client
        .post(&url)
        .header("X-Vault-Token", &activation.token)
        .json(&json!({}))
        .send()
        .await
        .map_err(|e| {
            bad(format!(
                "error unwrapping the activation token at {url}: {e}"
            ))
        })?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| bad(format!("reading the primary's answer: {e}")))?
    {
        if body.len() + chunk.len() > MAX_UNWRAP_RESPONSE_BYTES {
            return Err(bad("the primary's answer to unwrap is too large"));
        }
        body.extend_from_slice(&chunk);
    }
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("unreadable answer from the primary: {e}")))?;
    if !status.is_success() {
        return Err(bad(format!(
            "the primary refused the activation token ({status}): {}",
            body.get("errors").cloned().unwrap_or(Value::Null)
        )));
    }
    let bundle = body
        .get("data")
        .and_then(|d| d.get("bundle"))
        .cloned()
        .ok_or_else(|| bad("the activation token does not carry a DR bundle"))?;
    serde_json::from_value(bundle).map_err(|e| bad(format!("invalid DR bundle: {e}")))
}

#[cfg(test)]
mod tests {
    use super::is_loopback_http;

    #[test]
    fn only_loopback_http_may_be_allowed() {
        assert!(is_loopback_http("http://127.0.0.1:8200"));
        assert!(is_loopback_http("http://localhost:8200/"));
        assert!(is_loopback_http("http://[::1]:8200"));
        assert!(!is_loopback_http("http://10.0.0.1:8200"));
        assert!(!is_loopback_http("http://127.0.0.1.example.com:8200"));
        assert!(!is_loopback_http("https://127.0.0.1:8200"));
    }
}
