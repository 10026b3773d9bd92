//! The testkit's `bunker` process (crates/testkit), with an async client for setup requests,
//! handing out `vaultrs` clients for it.
//!
//! Readiness is decided by polling `GET /v1/sys/health` against a deadline, never by a fixed
//! sleep. The process is killed when the [`Server`] is dropped; if that happens because a test
//! panicked, the tail of the server's logs is printed first.

// Test helpers fail by panicking, like the tests they serve.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use bunker_testkit::{free_port, ServerOptions, ServerProcess, DEV_ROOT_TOKEN, READY_DEADLINE};
use serde_json::{json, Value};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

/// Per-request timeout for both the vaultrs client and the raw setup client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between two polls of a condition that has a deadline.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A vaultrs client for `addr` using `token`; every setting that could otherwise come
/// from `VAULT_*` environment variables is set explicitly.
pub fn vault_client(addr: &str, token: &str) -> VaultClient {
    let settings = VaultClientSettingsBuilder::default()
        .address(addr)
        .token(token)
        .timeout(Some(REQUEST_TIMEOUT))
        .verify(true)
        .ca_certs(Vec::new())
        .namespace(None)
        .build()
        .expect("vaultrs client settings");
    VaultClient::new(settings).expect("vaultrs client")
}

/// The HTTP status of a vaultrs error that came from a server response, whichever way
/// vaultrs reported it: `APIError` when the body was Vault's `{"errors": [...]}`, or the
/// underlying rustify `ServerResponseError` for any other body (e.g. a health document).
pub fn http_status(err: &ClientError) -> Option<u16> {
    match err {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

/// Asserts `res` failed with a server response of `code`; returns the error.
#[track_caller]
pub fn expect_status<T: std::fmt::Debug>(res: Result<T, ClientError>, code: u16) -> ClientError {
    match res {
        Ok(v) => panic!("expected HTTP {code}, got success: {v:?}"),
        Err(e) => {
            assert_eq!(
                http_status(&e),
                Some(code),
                "expected HTTP {code}, got {e:?}"
            );
            e
        }
    }
}

/// `sys/health` answered `code` with the health document as its body (Vault does not send an
/// `{"errors"}` body there): vaultrs reports it as a raw server response, and the document
/// still parses as vaultrs's own type.
#[track_caller]
pub fn health_document(
    res: Result<vaultrs::api::sys::responses::ReadHealthResponse, ClientError>,
    code: u16,
) -> vaultrs::api::sys::responses::ReadHealthResponse {
    let err = expect_status(res, code);
    let ClientError::RestClientError {
        source:
            rustify::errors::ClientError::ServerResponseError {
                content: Some(body),
                ..
            },
    } = &err
    else {
        panic!("health {code} without the health document: {err:?}");
    };
    serde_json::from_str(body).expect("the health document parses as ReadHealthResponse")
}

/// One `bunker server` process (the testkit's), with an async client for setup requests.
pub struct Server {
    process: ServerProcess,
    http: reqwest::Client,
    /// Root token: `root` in dev mode, from `sys/init` otherwise.
    pub root_token: String,
    /// The one unseal key of [`Server::initialized`] (empty otherwise).
    pub unseal_key: String,
}

impl Server {
    /// `bunker server -dev`: in-memory, unsealed, root token `root`, KV v2 at `secret/`.
    pub async fn dev() -> Server {
        Server::started(ServerProcess::dev(), DEV_ROOT_TOKEN.to_owned()).await
    }

    /// A config-file server on embedded storage with a cluster port; listening but
    /// uninitialised.
    pub async fn with_config() -> Server {
        let options = ServerOptions {
            listener_extra: format!("  cluster_address = \"127.0.0.1:{}\"", free_port()),
            config_extra: "replication {\n  activation_allow_http = true\n}".into(),
            ..Default::default()
        };
        Server::started(ServerProcess::with_config(&options), String::new()).await
    }

    /// [`Server::with_config`], then initialised with one key share and unsealed.
    pub async fn initialized() -> Server {
        let mut s = Server::with_config().await;
        let (code, body) = s
            .raw(
                "PUT",
                "sys/init",
                None,
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await;
        assert_eq!(code, 200, "sys/init: {body}");
        let key = body["keys"][0]
            .as_str()
            .expect("keys[0] in sys/init")
            .to_owned();
        s.root_token = body["root_token"]
            .as_str()
            .expect("root_token in sys/init")
            .to_owned();
        s.unseal_key = key.clone();
        let (code, body) = s
            .raw("PUT", "sys/unseal", None, Some(json!({ "key": key })))
            .await;
        assert_eq!(code, 200, "sys/unseal: {body}");
        assert_eq!(
            body["sealed"],
            json!(false),
            "still sealed after the only key: {body}"
        );
        s
    }

    async fn started(mut process: ServerProcess, root_token: String) -> Server {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("build raw HTTP client");
        process.start();
        let mut s = Server {
            process,
            http,
            root_token,
            unseal_key: String::new(),
        };
        s.wait_ready().await;
        s
    }

    /// Poll `GET /v1/sys/health` until the server answers at all (any status).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            self.process.assert_running();
            let probe = self
                .http
                .get(self.process.url("sys/health"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if probe.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                self.process.dump_logs();
                panic!(
                    "bunker server not answering on {} after {READY_DEADLINE:?}",
                    self.addr()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub fn addr(&self) -> String {
        self.process.addr()
    }

    /// A vaultrs client with the root token.
    pub fn root_client(&self) -> VaultClient {
        vault_client(&self.addr(), &self.root_token)
    }

    /// A vaultrs client with `token`.
    pub fn client(&self, token: &str) -> VaultClient {
        vault_client(&self.addr(), token)
    }

    /// A raw JSON request for setup steps vaultrs has no call for; returns the status and
    /// the body (`Value::Null` when empty or not JSON).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut req = self.http.request(method.clone(), self.process.url(path));
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: transport error: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Poll `check` every [`POLL_INTERVAL`] until it returns `Some`, or panic with the last
/// observation (`describe`) once `deadline` has passed.
pub async fn poll_until<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let end = Instant::now() + deadline;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > end => {
                panic!("{what}: not reached within {deadline:?}; last observation: {last}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}
