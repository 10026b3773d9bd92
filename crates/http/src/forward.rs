//! HA request forwarding: a standby sends the requests it does not answer itself to the active
//! node over the cluster port, and the active node serves them with the same router as its API
//! listener, so clients may talk to any node (as Vault's request forwarding).
//!
//! **Credentials.** At each activation the active node makes a new CA, a server certificate
//! (its key stays in this process's memory) and one client certificate for the standbys,
//! and advertises the CA and the client certificate and key through the barrier, beside its
//! addresses ([`bunker_core::ha::Advertiser`]). Only nodes that can open the barrier (unsealed
//! nodes of this cluster) can read them; the CA key is dropped at once, so nobody can mint
//! more. A connection is mutual TLS 1.3 with ALPN [`ALPN_FORWARD`], and the active node
//! accepts it only while it is active.
//!
//! **What travels.** The request as the client sent it (method, path and query, headers except
//! hop-by-hop ones, body), plus the client's address in [`FORWARDED_FOR`], which the active
//! node trusts only on a forwarded connection (for its audit log and `remote_addr`). The
//! standby does not parse or audit a request it forwards; the active node does both.
//!
//! **Failures.** A standby that cannot reach the active node over the cluster port (not yet
//! advertised, no cluster port, a handshake refused) answers as without forwarding: a 307 to
//! the active node's `api_addr`. Once a request was sent, a failure is a 502: the request may
//! have run on the active node, and sending it elsewhere could run it twice.
//!
//! Design reason: HTTP/1.1 over the cluster port rather than Vault's gRPC: the router already
//! speaks it, the request needs no re-encoding, and the cluster port already tells its
//! protocols apart by ALPN.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use axum::Router;
use bunker_core::Core;
use bunker_wal::tls::{self, ReplicationCa, ALPN_FORWARD};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::limits::ListenerLimits;

/// The client's address, as the standby saw it; trusted only on forwarded connections.
pub const FORWARDED_FOR: &str = "x-bunker-forwarded-for";
/// Vault's header asking a standby for a 307 instead of forwarding.
pub const NO_FORWARDING: &str = "x-vault-no-request-forwarding";
/// TCP connect and TLS handshake to the active node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The active node's answer (its head; the body streams as it comes).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a standby trusts what it read of the active node's advertisement.
const TARGET_TTL: Duration = Duration::from_secs(1);
/// Idle connections a standby keeps to the active node.
const MAX_IDLE: usize = 8;
/// Validity of the standbys' client certificate: it dies with the activation anyway.
const CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Marks a request that arrived forwarded from a standby (never forwarded again).
#[derive(Clone, Copy, Debug)]
pub struct Forwarded;

/// Why a request was not forwarded.
pub(crate) enum ForwardError {
    /// Nothing was sent: the caller answers as without forwarding (307).
    NotSent(String),
    /// The request was sent and no answer came back.
    Failed(String),
}

/// Where the active node is, and how to reach it.
struct Target {
    looked_up: Instant,
    addr: Option<String>,
    config: Option<Arc<rustls::ClientConfig>>,
}

/// A node's request forwarding: the active node's server side and a standby's client side.
pub struct Forwarding {
    core: Arc<Core>,
    /// While active: the TLS config standbys are answered with.
    server: RwLock<Option<Arc<rustls::ServerConfig>>>,
    target: Mutex<Option<Target>>,
    idle: Mutex<Vec<(String, SendRequest<Body>)>>,
    /// The router forwarded requests are served with, and its listener's limits.
    app: RwLock<Option<(Router, ListenerLimits)>>,
}

impl Forwarding {
    pub fn new(core: Arc<Core>) -> Arc<Forwarding> {
        Arc::new(Forwarding {
            core,
            server: RwLock::new(None),
            target: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            app: RwLock::new(None),
        })
    }

    /// Serve forwarded requests with `app` (the API router) under `limits`.
    pub fn set_router(&self, app: Router, limits: ListenerLimits) {
        *self
            .app
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((app, limits));
    }
}

impl tls::ForwardedConnections for Forwarding {
    /// The active node's TLS config for standbys, while it is active.
    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        if !self.core.is_active_node() {
            return None;
        }
        self.server
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Serve a connection a standby opened on the cluster port (already authenticated).
    fn serve(
        &self,
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        remote: SocketAddr,
    ) {
        let app = self
            .app
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some((app, limits)) = app else {
            return;
        };
        let marked = app.layer(axum::Extension(Forwarded));
        crate::serve::serve_accepted(tls, remote, marked, &limits);
    }
}

impl Forwarding {
    fn make_credentials(&self) -> Result<Value, tls::TlsError> {
        let ca = ReplicationCa::generate("forwarding")?;
        let server = ca.issue_server_cert()?;
        let client = ca.issue_client_cert("standby", CLIENT_CERT_VALIDITY)?;
        let config = tls::server_config(&ca.cert_pem, &server)?;
        *self
            .server
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(tls::server_config_for(&config, ALPN_FORWARD));
        Ok(json!({
            "ca_cert_pem": ca.cert_pem,
            "client_cert_pem": client.cert_pem,
            "client_key_pem": client.key_pem.as_str(),
        }))
    }

    /// The active node's cluster address and a client config for it, looked up at most once
    /// per [`TARGET_TTL`].
    async fn target(&self) -> Option<(String, Arc<rustls::ClientConfig>)> {
        let cached = {
            let t = self
                .target
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.as_ref()
                .filter(|t| t.looked_up.elapsed() < TARGET_TTL)
                .map(|t| t.addr.clone().zip(t.config.clone()))
        };
        if let Some(found) = cached {
            return found;
        }
        let found = self.core.forwarding_target().await;
        let (addr, config) = match found {
            Some((addr, credentials)) => match client_config(&credentials) {
                Ok(config) => (Some(host_port(&addr)), Some(config)),
                Err(e) => {
                    tracing::warn!(error = %e, "the active node's forwarding credentials are unusable");
                    (None, None)
                }
            },
            None => (None, None),
        };
        *self
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Target {
            looked_up: Instant::now(),
            addr: addr.clone(),
            config: config.clone(),
        });
        addr.zip(config)
    }

    fn forget_target(&self) {
        *self
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// An idle connection to `addr` that can take a request.
    fn take_idle(&self, addr: &str) -> Option<SendRequest<Body>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|(a, s)| a == addr && !s.is_closed());
        while let Some((_, sender)) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, addr: String, sender: SendRequest<Body>) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push((addr, sender));
        }
    }

    async fn connect(
        &self,
        addr: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<SendRequest<Body>, String> {
        let tls = tls::connect_for(addr, config, ALPN_FORWARD, CONNECT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "forwarding connection ended");
            }
        });
        Ok(sender)
    }

    /// Send a request to the active node and hand back its answer.
    pub(crate) async fn forward(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: axum::body::Bytes,
        client: Option<SocketAddr>,
    ) -> Result<Response<Body>, ForwardError> {
        let Some((addr, config)) = self.target().await else {
            return Err(ForwardError::NotSent(
                "the active node does not take forwarded requests".into(),
            ));
        };
        let build = || {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(uri.path_and_query().map_or("/", |p| p.as_str()));
            if let Some(h) = req.headers_mut() {
                copy_end_to_end(headers, h);
                h.remove(FORWARDED_FOR);
                if let Some(ip) =
                    client.and_then(|c| HeaderValue::from_str(&c.ip().to_string()).ok())
                {
                    h.insert(FORWARDED_FOR, ip);
                }
                h.insert(
                    axum::http::header::HOST,
                    HeaderValue::from_static("bunker-active"),
                );
            }
            req.body(Body::from(body.clone()))
                .map_err(|e| ForwardError::NotSent(e.to_string()))
        };
        // A pooled connection the active node closed meanwhile gives the request back unsent:
        // then (only then) it goes on a new connection.
        let mut sender = match self.take_idle(&addr) {
            Some(sender) => sender,
            None => self.fresh(&addr, config.clone()).await?,
        };
        let mut request = build()?;
        for attempt in 0..2 {
            let sent =
                tokio::time::timeout(RESPONSE_TIMEOUT, sender.try_send_request(request)).await;
            match sent {
                Err(_) => {
                    return Err(ForwardError::Failed(format!(
                        "the active node did not answer within {}s",
                        RESPONSE_TIMEOUT.as_secs()
                    )))
                }
                Ok(Ok(response)) => {
                    self.put_idle(addr, sender);
                    return Ok(answer(response));
                }
                Ok(Err(mut e)) => match e.take_message() {
                    Some(unsent) if attempt == 0 => {
                        request = unsent;
                        sender = self.fresh(&addr, config.clone()).await?;
                    }
                    _ => return Err(ForwardError::Failed(e.into_error().to_string())),
                },
            }
        }
        Err(ForwardError::Failed("the request could not be sent".into()))
    }

    async fn fresh(
        &self,
        addr: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<SendRequest<Body>, ForwardError> {
        self.connect(addr, config).await.map_err(|e| {
            self.forget_target();
            ForwardError::NotSent(format!("connecting to the active node at {addr}: {e}"))
        })
    }
}

impl bunker_core::ha::Advertiser for Forwarding {
    fn advertise(&self) -> Option<Value> {
        match self.make_credentials() {
            Ok(credentials) => Some(credentials),
            Err(e) => {
                tracing::warn!(error = %e, "no request forwarding: making its credentials failed");
                None
            }
        }
    }

    fn withdraw(&self) {
        *self
            .server
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// A standby's client config from the active node's advertised credentials.
fn client_config(credentials: &Value) -> Result<Arc<rustls::ClientConfig>, String> {
    let field = |name: &str| {
        credentials
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{name} missing"))
    };
    let client = tls::CertPair {
        cert_pem: field("client_cert_pem")?.to_owned(),
        key_pem: zeroize::Zeroizing::new(field("client_key_pem")?.to_owned()),
    };
    let config = tls::client_config(field("ca_cert_pem")?, &client).map_err(|e| e.to_string())?;
    Ok(tls::client_config_for(&config, ALPN_FORWARD))
}

/// `host:port` of a cluster address given as a URL or as `host:port`.
fn host_port(addr: &str) -> String {
    addr.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_start_matches("tcp://")
        .trim_end_matches('/')
        .to_owned()
}

/// Headers that describe one connection, not the request (RFC 9110, 7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The active node's answer, as the client gets it.
fn answer(response: Response<hyper::body::Incoming>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    copy_end_to_end(&parts.headers, out.headers_mut());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut from = HeaderMap::new();
        from.insert("x-vault-token", HeaderValue::from_static("t"));
        from.insert("connection", HeaderValue::from_static("close"));
        from.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        from.insert("host", HeaderValue::from_static("standby"));
        let mut to = HeaderMap::new();
        copy_end_to_end(&from, &mut to);
        assert_eq!(to.len(), 1);
        assert_eq!(
            to.get("x-vault-token").map(HeaderValue::as_bytes),
            Some(&b"t"[..])
        );
    }

    #[test]
    fn cluster_addresses_become_host_and_port() {
        assert_eq!(host_port("https://10.0.0.1:8201"), "10.0.0.1:8201");
        assert_eq!(host_port("10.0.0.1:8201/"), "10.0.0.1:8201");
    }
}
