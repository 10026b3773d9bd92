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
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use bunker_core::Core;
use bunker_wal::tls::{self, ReplicationCa, ALPN_FORWARD};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::limits::ListenerLimits;

/// The client's address, as the standby saw it; believed only on forwarded connections, where
/// it becomes the request's `remote_addr` (audit, and the CIDR bindings of tokens and AppRole).
pub const FORWARDED_FOR: &str = "x-bunker-forwarded-for";
/// Vault's header asking a standby for a 307 instead of forwarding.
pub const NO_FORWARDING: &str = "x-vault-no-request-forwarding";
/// TCP connect and TLS handshake to the active node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The active node's answer (its head; the body streams as it comes).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a standby trusts what it read of the active node's advertisement (and that it
/// could not reach it).
const TARGET_TTL: Duration = Duration::from_secs(1);
/// Connections a standby keeps to the active node at most: requests beyond them wait for one.
/// Also the active node's handshake budget per address.
const MAX_CONNECTIONS: usize = 4;
/// An idle connection is dropped after this, before the active node's idle timeout closes it
/// under a request.
const MAX_IDLE_AGE: Duration = Duration::from_secs(30);
/// Validity of the forwarding certificates: they die with the activation anyway (just under
/// the CA's ten years).
const CERT_VALIDITY_DAYS: i64 = 3649;

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
    found: Option<(String, Arc<rustls::ClientConfig>)>,
    /// A connection to it failed since the lookup: answer without trying until the next one.
    unreachable: bool,
}

struct Idle {
    addr: String,
    sender: SendRequest<Body>,
    since: Instant,
}

type Pool = Arc<Mutex<Vec<Idle>>>;

/// A node's request forwarding: the active node's server side and a standby's client side.
pub struct Forwarding {
    core: Arc<Core>,
    /// While active: the TLS config standbys are answered with.
    server: RwLock<Option<Arc<rustls::ServerConfig>>>,
    /// Bumped when this node stops being active (or makes new credentials): the forwarded
    /// connections it serves close.
    generation: watch::Sender<u64>,
    /// One lookup at a time; the others wait for its result.
    target: tokio::sync::Mutex<Option<Target>>,
    idle: Pool,
    slots: Arc<Semaphore>,
    /// The router forwarded requests are served with, and its listener's limits.
    app: RwLock<Option<(crate::App, ListenerLimits)>>,
}

impl Forwarding {
    pub fn new(core: Arc<Core>) -> Arc<Forwarding> {
        Arc::new(Forwarding {
            core,
            server: RwLock::new(None),
            generation: watch::channel(0).0,
            target: tokio::sync::Mutex::new(None),
            idle: Arc::new(Mutex::new(Vec::new())),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            app: RwLock::new(None),
        })
    }

    /// Serve forwarded requests with `app` (the API router) under `limits`.
    pub fn set_router(&self, app: crate::App, limits: ListenerLimits) {
        *self
            .app
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((app, limits));
    }

    /// Close the forwarded connections served so far.
    fn close_served(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl tls::ForwardedConnections for Forwarding {
    /// The active node's TLS config for standbys, while it is active.
    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        if !self.core.is_active_node() || self.core.is_sealed() {
            return None;
        }
        self.server
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Serve a connection a standby opened on the cluster port (already authenticated), until
    /// it ends or this node stops being active.
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
        let mut generation = self.generation.subscribe();
        let stop = async move {
            let _ = generation.changed().await;
        };
        let marked = app.forwarded();
        crate::serve::serve_accepted(tls, remote, marked, &limits, stop);
    }
}

impl Forwarding {
    fn make_credentials(&self) -> Result<Value, tls::TlsError> {
        let ca = ReplicationCa::generate("forwarding")?;
        let server = ca.issue_server_cert_for(CERT_VALIDITY_DAYS)?;
        let valid = Duration::from_secs(u64::try_from(CERT_VALIDITY_DAYS).unwrap_or(0) * 86_400);
        let client = ca.issue_client_cert("standby", valid)?;
        let config = tls::server_config(&ca.cert_pem, &server)?;
        *self
            .server
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(tls::server_config_for(&config, ALPN_FORWARD));
        self.close_served();
        Ok(json!({
            "ca_cert_pem": ca.cert_pem,
            "client_cert_pem": client.cert_pem,
            "client_key_pem": client.key_pem.as_str(),
        }))
    }

    /// The active node's cluster address and a client config for it: looked up at most once
    /// per [`TARGET_TTL`], one lookup at a time; `None` also while it was found unreachable.
    async fn target(&self) -> Option<(String, Arc<rustls::ClientConfig>)> {
        let mut cached = self.target.lock().await;
        if let Some(t) = cached
            .as_ref()
            .filter(|t| t.looked_up.elapsed() < TARGET_TTL)
        {
            return if t.unreachable { None } else { t.found.clone() };
        }
        let found = match self.core.forwarding_target().await {
            Some((addr, credentials)) => match client_config(&credentials) {
                Ok(config) => Some((host_port(&addr), config)),
                Err(e) => {
                    tracing::warn!(error = %e, "the active node's forwarding credentials are unusable");
                    None
                }
            },
            None => None,
        };
        *cached = Some(Target {
            looked_up: Instant::now(),
            found: found.clone(),
            unreachable: false,
        });
        found
    }

    /// The active node could not be reached, or stopped answering: no more tries until the
    /// next lookup, and no connection to it kept.
    async fn unreachable(&self, addr: &str) {
        if let Some(t) = self.target.lock().await.as_mut() {
            t.unreachable = true;
        }
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|i| i.addr != addr);
    }

    /// An idle connection to `addr` that can take a request; stale ones are dropped.
    fn take_idle(&self, addr: &str) -> Option<SendRequest<Body>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|i| {
            i.addr == addr && !i.sender.is_closed() && i.since.elapsed() < MAX_IDLE_AGE
        });
        while let Some(i) = idle.pop() {
            if i.sender.is_ready() {
                return Some(i.sender);
            }
        }
        None
    }

    async fn connect(
        &self,
        addr: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<SendRequest<Body>, ForwardError> {
        let connected = async {
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
            Ok::<_, String>(sender)
        };
        match connected.await {
            Ok(sender) => Ok(sender),
            Err(e) => {
                self.unreachable(addr).await;
                Err(ForwardError::NotSent(format!(
                    "connecting to the active node at {addr}: {e}"
                )))
            }
        }
    }

    /// Send a request to the active node and hand back its answer.
    pub(crate) async fn forward(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
        client: Option<SocketAddr>,
    ) -> Result<Response<Body>, ForwardError> {
        let Some((addr, config)) = self.target().await else {
            return Err(ForwardError::NotSent(
                "the active node does not take forwarded requests".into(),
            ));
        };
        let permit = tokio::time::timeout(CONNECT_TIMEOUT, self.slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| ForwardError::NotSent("every forwarding connection is busy".into()))?;
        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()));
        if let Some(h) = request.headers_mut() {
            copy_end_to_end(headers, h);
            h.remove(FORWARDED_FOR);
            h.remove(axum::http::header::EXPECT);
            if let Some(ip) = client.and_then(|c| HeaderValue::from_str(&c.ip().to_string()).ok()) {
                h.insert(FORWARDED_FOR, ip);
            }
            h.insert(
                axum::http::header::HOST,
                HeaderValue::from_static("bunker-active"),
            );
        }
        let mut request = request
            .body(Body::from(body))
            .map_err(|e| ForwardError::NotSent(e.to_string()))?;
        // A pooled connection the active node closed meanwhile gives the request back unsent:
        // then (only then) it goes on a new connection.
        let mut sender = match self.take_idle(&addr) {
            Some(sender) => sender,
            None => self.connect(&addr, config.clone()).await?,
        };
        for attempt in 0..2 {
            let sent =
                tokio::time::timeout(RESPONSE_TIMEOUT, sender.try_send_request(request)).await;
            match sent {
                Err(_) => {
                    self.unreachable(&addr).await;
                    return Err(ForwardError::Failed(format!(
                        "the active node did not answer within {}s",
                        RESPONSE_TIMEOUT.as_secs()
                    )));
                }
                Ok(Ok(response)) => {
                    let back = ReturnToPool {
                        pool: self.idle.clone(),
                        addr,
                        sender: Some(sender),
                        _permit: permit,
                    };
                    return Ok(answer(response, back));
                }
                Ok(Err(mut e)) => match e.take_message() {
                    Some(unsent) if attempt == 0 => {
                        request = unsent;
                        sender = self.connect(&addr, config.clone()).await?;
                    }
                    Some(_) => {
                        return Err(ForwardError::NotSent(e.into_error().to_string()));
                    }
                    None => {
                        self.unreachable(&addr).await;
                        return Err(ForwardError::Failed(e.into_error().to_string()));
                    }
                },
            }
        }
        Err(ForwardError::NotSent(
            "the request could not be sent".into(),
        ))
    }
}

/// Gives a connection back to the pool once the answer on it was read to its end (an HTTP/1
/// connection takes the next request only then), and its slot back in any case.
struct ReturnToPool {
    pool: Pool,
    addr: String,
    sender: Option<SendRequest<Body>>,
    _permit: OwnedSemaphorePermit,
}

impl ReturnToPool {
    fn done(&mut self) {
        if let Some(sender) = self.sender.take() {
            if !sender.is_closed() {
                let mut pool = self
                    .pool
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if pool.len() < MAX_CONNECTIONS {
                    pool.push(Idle {
                        addr: std::mem::take(&mut self.addr),
                        sender,
                        since: Instant::now(),
                    });
                }
            }
        }
    }
}

/// The active node's answer body; at its end the connection goes back to the pool.
struct Relayed {
    body: hyper::body::Incoming,
    back: ReturnToPool,
}

impl http_body::Body for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.back.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
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
        self.close_served();
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

/// Headers that describe one connection, not the message (RFC 9110, 7.6.1), and those the
/// forwarding connection sets itself.
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
    )
}

/// The end-to-end headers of `from`: without hop-by-hop ones, those `Connection` names, and
/// the length (the body is re-framed).
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let named: Vec<String> = from
        .get_all(axum::http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        if !hop_by_hop(name)
            && name != axum::http::header::CONTENT_LENGTH
            && !named.iter().any(|n| n == name.as_str())
        {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The active node's answer, as the client gets it (its length kept: a HEAD answer has one
/// and no body).
fn answer(response: Response<hyper::body::Incoming>, back: ReturnToPool) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let mut out = Response::new(Body::new(Relayed { body, back }));
    *out.status_mut() = parts.status;
    copy_end_to_end(&parts.headers, out.headers_mut());
    if let Some(length) = parts.headers.get(axum::http::header::CONTENT_LENGTH) {
        out.headers_mut()
            .insert(axum::http::header::CONTENT_LENGTH, length.clone());
    }
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
        from.insert("content-length", HeaderValue::from_static("3"));
        from.append("connection", HeaderValue::from_static("x-private"));
        from.insert("x-private", HeaderValue::from_static("p"));
        let mut to = HeaderMap::new();
        copy_end_to_end(&from, &mut to);
        assert_eq!(to.len(), 1, "{to:?}");
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
