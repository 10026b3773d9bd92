//! The HTTP layer: translates HTTP requests into core [`Request`]s and core results into
//! Vault's JSON envelope and status codes. Nothing else lives here; status codes are decided
//! only in [`status`].
//!
//! May see: the core's request entry point and the SDK types. May not see: storage, the
//! barrier, tokens (it forwards the header), replication.

mod activity;
mod body;
mod envelope;
pub mod forward;
mod limits;
mod serve;
mod snapshot;
mod status;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::Router;
use bunker_core::Core;
use bunker_sdk::{Data, LogicalError, Operation, Request};
use serde_json::Value;

pub use body::parse_body;
pub use limits::{
    ListenerLimits, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_READ_HEADER_TIMEOUT, DEFAULT_READ_TIMEOUT,
};
pub use serve::{serve, ListenerTls};

#[derive(Clone)]
struct AppState {
    core: Arc<Core>,
    max_request_bytes: usize,
    read_timeout: Duration,
    unauthenticated_metrics_access: bool,
    restore: snapshot::RestoreLimits,
    /// HA request forwarding, on a node of an HA cluster with a cluster port.
    forwarding: Option<Arc<forward::Forwarding>>,
}

/// The API as a listener serves it: requests under `/v1/` go straight to [`handle`]; the rest
/// (the dashboard's static files at `/ui/`, and a 404 for anything else) through axum's
/// router, whose fallback is the same [`handle`]. An API request gets what the router did for
/// it (it matched no route and went to the fallback; [`finish_as_a_route`] does what axum does
/// to a route's answer) without its cost: path matching, a clone of the boxed method router, a
/// boxed handler future and the extractors, about 5 % of a KV write's instructions
/// (bench/README.md, "Instructions per write").
#[derive(Clone)]
pub struct App {
    router: Router,
    state: Arc<AppState>,
    /// Marks each request as forwarded from a standby (the cluster port's connections).
    forwarded: bool,
}

impl App {
    /// This app for the connections standbys forward requests on: each request is marked
    /// [`forward::Forwarded`], so it is never forwarded again.
    pub(crate) fn forwarded(self) -> App {
        App {
            forwarded: true,
            ..self
        }
    }

    /// Marks a request that came from a standby's forwarding connection: it is never forwarded
    /// again (`forward_from_standby`).
    fn mark(&self, request: &mut axum::http::Request<Body>) {
        if self.forwarded {
            request.extensions_mut().insert(forward::Forwarded);
        }
    }

    /// Answers one request.
    pub(crate) async fn call<B>(self, request: axum::http::Request<B>) -> HttpResponse
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let mut request = request.map(Body::new);
        // Marked for both paths (the router's fallback is the same `handle`).
        self.mark(&mut request);
        if !request.uri().path().starts_with("/v1/") {
            return match tower::ServiceExt::oneshot(self.router, request).await {
                Ok(answer) => answer,
                Err(never) => match never {},
            };
        }
        let head = request.method() == Method::HEAD;
        let mut answer = handle(State(self.state), request).await;
        finish_as_a_route(&mut answer, head);
        answer
    }
}

/// What axum's router does to every answer of a top-level route (`RouteFuture`), for the
/// answers of [`App::call`]'s direct path: a `Content-Length` when the body's size is known and
/// none is set, then no body for a HEAD request, whatever the answer (an error's included):
/// HTTP/1 would drop it anyway, HTTP/2 would send it.
fn finish_as_a_route(answer: &mut HttpResponse, head: bool) {
    use axum::body::HttpBody;
    let headers = answer.headers();
    if !headers.contains_key(axum::http::header::CONTENT_LENGTH) {
        if let Some(size) = answer.body().size_hint().exact() {
            answer
                .headers_mut()
                .insert(axum::http::header::CONTENT_LENGTH, size.into());
        }
    }
    if head {
        *answer.body_mut() = Body::empty();
    }
}

/// Build the API over a core: the dashboard's static files at `/ui/`, everything else (the
/// Vault API under `/v1/`) through [`handle`].
pub fn router(core: Arc<Core>, limits: &ListenerLimits) -> App {
    router_forwarding(core, limits, None)
}

/// [`router`], with the requests a standby does not answer forwarded to the active node.
pub fn router_forwarding(
    core: Arc<Core>,
    limits: &ListenerLimits,
    forwarding: Option<Arc<forward::Forwarding>>,
) -> App {
    let state = Arc::new(AppState {
        forwarding,
        core,
        max_request_bytes: limits.max_request_bytes,
        read_timeout: limits.read_timeout,
        unauthenticated_metrics_access: limits.unauthenticated_metrics_access,
        restore: snapshot::RestoreLimits {
            max_bytes: limits.max_snapshot_bytes,
            read_timeout: limits.snapshot_read_timeout,
            uploads: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        },
    });
    App {
        router: ui::routes().fallback(handle).with_state(state.clone()),
        state,
        forwarded: false,
    }
}

/// The operation of a request. As in Vault, a non-empty `help` query parameter (`?help=1`) or
/// the `HELP` method asks for the path's help, whatever the method.
fn operation_for(method: &Method, query: &Data) -> Option<Operation> {
    let help = query
        .get("help")
        .and_then(Value::as_str)
        .is_some_and(|v| !v.is_empty());
    if help || method.as_str() == "HELP" {
        return Some(Operation::Help);
    }
    let list = query
        .get("list")
        .and_then(Value::as_str)
        .and_then(bunker_sdk::fields::parse_go_bool)
        .unwrap_or(false);
    match method.as_str() {
        "GET" | "HEAD" if list => Some(Operation::List),
        "GET" | "HEAD" => Some(Operation::Read),
        "POST" | "PUT" => Some(Operation::Update),
        "DELETE" => Some(Operation::Delete),
        "PATCH" => Some(Operation::Patch),
        "LIST" => Some(Operation::List),
        _ => None,
    }
}

fn parse_query(uri: &Uri) -> Data {
    let mut data = Data::new();
    if let Some(q) = uri.query() {
        for (k, v) in url_pairs(q) {
            data.insert(k, Value::String(v));
        }
    }
    data
}

/// Decode `a=b&c=d` with percent-decoding and `+` as space.
fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    decode(s, true)
}

/// Decode a URL path: `%XX` escapes, but `+` stays a plus sign.
fn path_decode(s: &str) -> String {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i) {
            Some(b'+') if plus_is_space => out.push(b' '),
            Some(b'%') => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            Some(b) => out.push(*b),
            None => break,
        }
        i += 1;
    }
    // Valid UTF-8 (every path a client sends in practice) is kept as it is, not copied again.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn client_token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("x-vault-token").and_then(|v| v.to_str().ok()) {
        return Some(t.trim().to_owned());
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
}

fn wrap_ttl(headers: &HeaderMap) -> Result<Option<Duration>, LogicalError> {
    let Some(raw) = headers.get("x-vault-wrap-ttl") else {
        return Ok(None);
    };
    let raw = raw
        .to_str()
        .map_err(|_| LogicalError::InvalidRequest("invalid X-Vault-Wrap-TTL header".into()))?;
    let secs = bunker_sdk::duration::parse_duration_secs(raw)?;
    if secs == 0 {
        return Err(LogicalError::InvalidRequest(
            "wrap TTL must be greater than zero".into(),
        ));
    }
    Ok(Some(Duration::from_secs(secs)))
}

/// Sent on successful writes to a DR primary: see [`Core::replication_wal_index`].
const WAL_INDEX_HEADER: &str = "x-bunker-wal-index";

async fn handle(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let connect = parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned();
    let forwarded = parts.extensions.get::<forward::Forwarded>().is_some();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let Some(path) = uri.path().strip_prefix("/v1/") else {
        return status::error_response(StatusCode::NOT_FOUND, vec![]);
    };
    let query = parse_query(&uri);
    if let Some(list) = query.get("list").and_then(Value::as_str) {
        if bunker_sdk::fields::parse_go_bool(list).is_none() {
            return status::from_error(&bunker_core::logical::LogicalError::InvalidRequest(
                format!("invalid value for \"list\": {list:?} is not a boolean"),
            ));
        }
    }
    let Some(operation) = operation_for(&method, &query) else {
        return status::error_response(StatusCode::METHOD_NOT_ALLOWED, vec![]);
    };
    if snapshot::is_snapshot_path(path) {
        let mut req = Request::new(operation, path_decode(path));
        req.client_token = client_token(&headers);
        req.remote_addr = connect.map(|c| ip_text(c.0.ip()));
        // Boxed, as the forwarding below: a rare path's large future would otherwise make every
        // request's future as large, and it is moved (copied) several times per request.
        return Box::pin(snapshot::handle(
            state.core.clone(),
            req,
            &uri,
            &headers,
            body,
            &state.restore,
        ))
        .await;
    }
    let bytes =
        match body::read_body(body, &headers, state.max_request_bytes, state.read_timeout).await {
            Ok(b) => b,
            Err(e) => return status::body_error(e),
        };
    // Open metrics are this node's own: a standby answers them itself.
    let open_metrics = state.unauthenticated_metrics_access
        && operation == Operation::Read
        && path_decode(path) == "sys/metrics";
    if !open_metrics {
        if let Some(answer) =
            forward_from_standby(&state, forwarded, &method, &uri, &headers, &bytes, connect).await
        {
            return answer;
        }
    }
    // The raw bytes are dropped here, before the request is handled.
    let mut data = match body::parse_body(&bytes) {
        Ok(d) => d,
        Err(e) => return status::from_error(&e),
    };
    drop(bytes);
    if matches!(operation, Operation::Read | Operation::List) {
        for (k, v) in query {
            if k != "list" {
                data.entry(k).or_insert(v);
            }
        }
    }
    let wrap_ttl = match wrap_ttl(&headers) {
        Ok(w) => w,
        Err(e) => return status::from_error(&e),
    };
    let mut req = Request::new(operation, path_decode(path));
    req.data = data;
    req.client_token = client_token(&headers);
    req.wrap_ttl = wrap_ttl;
    req.remote_addr = client_addr(forwarded, &headers, connect);
    let request_id = req.id;
    let span = tracing::debug_span!(
        "request",
        id = %request_id,
        op = operation.as_str(),
        path = %bunker_core::token::redact_path(&req.path),
    );
    let (result, stamp) = if open_metrics {
        let answer =
            tracing::Instrument::instrument(state.core.handle_metrics_unauthenticated(req), span);
        (answer.await, None)
    } else {
        // The WAL index of the request's own writes, from the storage writer.
        let answer = tracing::Instrument::instrument(state.core.handle(req), span);
        bunker_core::storage_stamp::collect(answer).await
    };
    if let Err(LogicalError::Standby(Some(leader))) = &result {
        return standby_redirect(leader, &uri);
    }
    let wal_index = match (&result, operation) {
        (Ok(_), Operation::Create | Operation::Update | Operation::Delete) => state
            .core
            .replication_wal_index()
            .map(|last| stamp.map_or(last, |own| own.min(last))),
        _ => None,
    };
    let mut resp = envelope::to_http(request_id.as_str(), operation, result);
    if let Some(index) = wal_index {
        // The WAL index of the request's own last write (a secondary holding it holds the
        // write), or, for a request whose writes were not recorded, the last index committed
        // after it was acknowledged: an upper bound (docs/replication.md).
        resp.headers_mut().insert(WAL_INDEX_HEADER, index.into());
    }
    if method == Method::HEAD {
        let (parts, _) = resp.into_parts();
        return HttpResponse::from_parts(parts, Body::empty());
    }
    resp.into_response()
}

/// On a standby, a request it does not answer itself goes to the active node: the active node's
/// answer, a 502 when it was sent and none came, or `None` to answer as without forwarding
/// (the core's 307). Never for a request that was itself forwarded, nor under
/// `X-Vault-No-Request-Forwarding`.
async fn forward_from_standby(
    state: &AppState,
    forwarded: bool,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    bytes: &[u8],
    connect: Option<ConnectInfo<SocketAddr>>,
) -> Option<HttpResponse> {
    let forwarding = state.forwarding.as_ref()?;
    let path = uri.path().strip_prefix("/v1/").unwrap_or_default();
    if forwarded
        || headers.contains_key(forward::NO_FORWARDING)
        || !state.core.is_standby()
        || bunker_core::ha::standby_answers(&path_decode(path))
    {
        return None;
    }
    let client = connect.map(|c| c.0);
    let body = axum::body::Bytes::copy_from_slice(bytes);
    let started = std::time::Instant::now();
    match Box::pin(forwarding.forward(method, uri, headers, body, client)).await {
        Ok(answer) => {
            metrics::histogram!("vault_ha_rpc_client_forward")
                .record(started.elapsed().as_secs_f64() * 1000.0);
            Some(answer)
        }
        Err(forward::ForwardError::NotSent(why)) => {
            metrics::counter!("bunker_ha_forward_redirected_total").increment(1);
            tracing::debug!(reason = %why, "request not forwarded; redirecting");
            None
        }
        Err(forward::ForwardError::Failed(why)) => {
            metrics::counter!("vault_ha_rpc_client_forward_errors").increment(1);
            tracing::warn!(error = %why, "forwarding a request to the active node failed");
            Some(status::error_response(
                StatusCode::BAD_GATEWAY,
                vec![format!(
                    "error forwarding the request to the active node: {why}"
                )],
            ))
        }
    }
}

/// The client's address: the connection's, or on a connection a standby forwarded a request
/// on, the one the standby saw.
fn client_addr(
    forwarded: bool,
    headers: &HeaderMap,
    connect: Option<ConnectInfo<SocketAddr>>,
) -> Option<String> {
    let relayed = forwarded
        .then(|| headers.get(forward::FORWARDED_FOR))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<std::net::IpAddr>().ok());
    relayed.or_else(|| connect.map(|c| c.0.ip())).map(ip_text)
}

/// An address as the request's text: IPv4 digit by digit, since `Ipv4Addr`'s `Display` goes
/// through the formatting machinery (~1,300 instructions, 1.4 % of a KV write's request).
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// A standby's answer: 307 to the same path and query on the active node, as Vault's
/// `respondStandby` (clients replay the request there, body and method included).
pub(crate) fn standby_redirect(leader: &str, uri: &Uri) -> HttpResponse {
    let target = format!(
        "{}{}",
        leader.trim_end_matches('/'),
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    match axum::http::HeaderValue::from_str(&target) {
        Ok(location) => {
            let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
            resp.headers_mut()
                .insert(axum::http::header::LOCATION, location);
            resp
        }
        Err(_) => status::from_error(&LogicalError::Standby(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_their_display() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.9.99.100",
            "255.255.255.255",
            "192.168.1.20",
            "::1",
            "::ffff:10.0.0.1",
            "2001:db8::42",
        ] {
            let ip: std::net::IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for octet in 0..=255u8 {
            let ip = std::net::IpAddr::from([octet, 1, octet, 10]);
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    /// The API over a new, uninitialised core, as a listener serves it.
    fn uninitialised_app() -> App {
        let core = Core::new(
            Arc::new(bunker_storage::InmemBackend::new()),
            bunker_core::CoreConfig::default(),
        );
        router(core, &ListenerLimits::default())
    }

    /// The API's requests go straight to `handle`, the rest through the router: the
    /// dashboard's routes, and the fallback's 404 for what is neither.
    #[tokio::test]
    async fn the_app_sends_the_api_to_the_handler_and_the_rest_to_the_router() {
        let app = uninitialised_app();
        let get = |path: &str| {
            axum::http::Request::get(path)
                .body(Body::empty())
                .expect("a request")
        };
        let ui = app.clone().call(get("/ui")).await;
        assert_eq!(ui.status(), StatusCode::MOVED_PERMANENTLY);
        // An uninitialised server's health: 501, from the core.
        let health = app.clone().call(get("/v1/sys/health")).await;
        assert_eq!(health.status(), StatusCode::NOT_IMPLEMENTED);
        let other = app.clone().call(get("/v2/sys/health")).await;
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
        let marked = |app: &App| {
            let mut request = get("/v1/sys/health");
            app.mark(&mut request);
            request.extensions().get::<forward::Forwarded>().is_some()
        };
        assert!(!marked(&app));
        let forwarded = app.forwarded();
        assert!(marked(&forwarded));
        let answer = forwarded.call(get("/v1/sys/health")).await;
        assert_eq!(answer.status(), StatusCode::NOT_IMPLEMENTED);
    }

    /// As through axum's router before: a HEAD answer has no body, whichever way `handle`
    /// returns (here a refused `list` value, answered before the request reaches the core),
    /// and keeps the length the body would have had.
    #[tokio::test]
    async fn a_head_answer_has_no_body_and_says_its_length() {
        let app = uninitialised_app();
        let request = |method: Method| {
            axum::http::Request::builder()
                .method(method)
                .uri("/v1/secret/data/x?list=maybe")
                .body(Body::empty())
                .expect("a request")
        };
        let get = app.clone().call(request(Method::GET)).await;
        assert_eq!(get.status(), StatusCode::BAD_REQUEST);
        let length = get
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .cloned();
        let body = axum::body::to_bytes(get.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(!body.is_empty());
        assert_eq!(length, Some(body.len().into()));

        let head = app.call(request(Method::HEAD)).await;
        assert_eq!(head.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            head.headers()
                .get(axum::http::header::CONTENT_LENGTH)
                .cloned(),
            length
        );
        let body = axum::body::to_bytes(head.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(body.is_empty());
    }

    /// Every request's future is moved (copied whole) a few times before it first runs, so its
    /// size is CPU per request: 48 KiB once (nested `async` wrappers each held the request's
    /// future again), 4 % of a busy server's CPU in `memmove`. Rare large paths are boxed:
    /// boxing help, login, replication, wrapping and token revocation took the core's from
    /// 7.9 to 5.9 KiB and the bytes a KV write copies by 41 % (callgrind, bench/README.md);
    /// auditing the token-less paths in functions of their own took it to 4.0 KiB (the
    /// compiler laid their results and audit entries beside the authenticated path's), and
    /// boxing a response's rare parts (`Response` 680 → 128 bytes) to 2.9 KiB.
    #[test]
    fn a_request_future_stays_small() {
        let backend = Arc::new(bunker_storage::InmemBackend::new());
        let core = Core::new(backend, bunker_core::CoreConfig::default());
        let state = Arc::new(AppState {
            forwarding: None,
            core: core.clone(),
            max_request_bytes: 1024,
            read_timeout: std::time::Duration::from_secs(1),
            unauthenticated_metrics_access: false,
            restore: snapshot::RestoreLimits {
                max_bytes: 1024,
                read_timeout: std::time::Duration::from_secs(1),
                uploads: Arc::new(tokio::sync::Semaphore::new(1)),
            },
        });
        let request = handle(State(state), axum::extract::Request::new(Body::empty()));
        let core_request = core.handle(Request::new(Operation::Read, String::from("sys/health")));
        let (http, inner) = (
            std::mem::size_of_val(&request),
            std::mem::size_of_val(&core_request),
        );
        assert!(
            http <= inner + 2048,
            "HTTP {http} bytes around the core's {inner}"
        );
        assert!(
            inner <= 3 * 1024 + 512,
            "the core's request future is {inner} bytes"
        );
    }

    #[test]
    fn query_decoding() {
        let pairs = url_pairs("a=b%20c&list=true&x=%zz&y=1+2");
        assert_eq!(pairs[0], ("a".into(), "b c".into()));
        assert_eq!(pairs[2], ("x".into(), "%zz".into()));
        assert_eq!(pairs[3], ("y".into(), "1 2".into()));
        assert_eq!(path_decode("secret/data/a%20b+c"), "secret/data/a b+c");
        assert_eq!(path_decode("secret/%E5%80%A4"), "secret/値");
        // An escape that is not UTF-8 is replaced, not kept as raw bytes.
        assert_eq!(path_decode("secret/%FFx"), "secret/\u{fffd}x");
    }

    #[test]
    fn methods() {
        let q = Data::new();
        assert_eq!(operation_for(&Method::GET, &q), Some(Operation::Read));
        assert_eq!(
            operation_for(&Method::from_bytes(b"LIST").unwrap_or(Method::GET), &q),
            Some(Operation::List)
        );
        assert_eq!(operation_for(&Method::OPTIONS, &q), None);
        let mut help = Data::new();
        help.insert("help".into(), Value::String("1".into()));
        assert_eq!(operation_for(&Method::GET, &help), Some(Operation::Help));
        assert_eq!(operation_for(&Method::POST, &help), Some(Operation::Help));
        help.insert("help".into(), Value::String(String::new()));
        assert_eq!(operation_for(&Method::GET, &help), Some(Operation::Read));
    }
}
