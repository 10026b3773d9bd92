//! Serving the router on a TCP listener, plain or TLS (rustls), with graceful shutdown and the
//! listener's [`ListenerLimits`]: a connection cap, a header read timeout, an idle timeout and
//! an optional response deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::activity::{Activity, InFlight, TrackedIo};
use crate::limits::ListenerLimits;
use crate::App;

/// TLS settings of an API listener.
pub type ListenerTls = Arc<rustls::ServerConfig>;

/// Time allowed for a TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for in-flight requests to finish after shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A request that was not answered within `http_write_timeout`; hyper closes the connection.
#[derive(Debug)]
struct ResponseTimedOut;

impl std::fmt::Display for ResponseTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request not answered within http_write_timeout")
    }
}

impl std::error::Error for ResponseTimedOut {}

/// A zero duration in the configuration means "no limit", as in Vault.
fn non_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Serve `app` until `shutdown` resolves, then drain in-flight connections.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ListenerTls>,
    app: App,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    // The header timeout is enforced in `drive`, not by hyper: hyper's would also cut idle
    // kept-alive connections at the header timeout instead of `http_idle_timeout`.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%remote, max = limits.max_connections, "connection cap reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let service = request_service(app.clone(), remote, activity.clone(), &limits);
        let io = TrackedIo::new(stream, activity.clone());
        let timeouts = ConnTimeouts {
            read_header: non_zero(limits.read_header_timeout),
            idle: non_zero(limits.idle_timeout),
        };
        match &acceptor {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _permit = permit;
                    log_end(drive(conn, &activity, timeouts).await, remote);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _permit = permit;
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %remote, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    let conn = watcher.watch(conn.into_owned());
                    log_end(drive(conn, &activity, timeouts).await, remote);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("timed out waiting for connections to drain");
    }
    Ok(())
}

/// Serve `app` on one connection accepted (and authenticated) elsewhere, with `limits`'
/// timeouts: the cluster port hands over the connections standbys forward requests on.
/// The connection closes when `stop` resolves.
pub(crate) fn serve_accepted<IO>(
    io: IO,
    remote: SocketAddr,
    app: App,
    limits: &ListenerLimits,
    stop: impl Future<Output = ()> + Send + 'static,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let service = request_service(app, remote, activity.clone(), limits);
    let timeouts = ConnTimeouts {
        read_header: non_zero(limits.read_header_timeout),
        idle: non_zero(limits.idle_timeout),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let io = TrackedIo::new(io, activity.clone());
    tokio::spawn(async move {
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let ended = tokio::select! {
            ended = drive(conn, &activity, timeouts) => ended
                .map(|r| r.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)),
            () = stop => None,
        };
        log_end(ended, remote);
    });
}

type ConnResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn log_end(result: Option<ConnResult>, remote: SocketAddr) {
    match result {
        None => tracing::debug!(%remote, "connection closed by the header or idle timeout"),
        Some(Err(e)) => tracing::debug!(error = %e, %remote, "connection ended with error"),
        Some(Ok(())) => {}
    }
}

/// The per-connection service: records the peer address, counts the request as in flight
/// (so the idle timer leaves it alone) and applies the response deadline.
fn request_service(
    app: App,
    remote: SocketAddr,
    activity: Arc<Activity>,
    limits: &ListenerLimits,
) -> TowerToHyperService<
    impl tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::http::Response<Body>,
            Error = ResponseTimedOut,
            Future = impl Future<Output = Result<axum::http::Response<Body>, ResponseTimedOut>> + Send,
        > + Clone,
> {
    let deadline = non_zero(limits.write_timeout);
    TowerToHyperService::new(tower::service_fn(
        move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            let in_flight = InFlight::start(activity.clone());
            let answer = app.clone().call(req);
            async move {
                let _in_flight = in_flight;
                match deadline {
                    None => Ok(answer.await),
                    Some(limit) => tokio::time::timeout(limit, answer)
                        .await
                        .map_err(|_| ResponseTimedOut),
                }
            }
        },
    ))
}

/// The timeouts [`drive`] enforces on a connection.
#[derive(Clone, Copy)]
struct ConnTimeouts {
    read_header: Option<Duration>,
    idle: Option<Duration>,
}

/// How often a connection's timeouts are looked at when no deadline is nearer.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Run a connection to its end, or close it when it has been waiting for a request's headers
/// for longer than the header timeout, or has been idle (nothing in flight, no bytes moving)
/// for longer than the idle timeout. `None` means it was closed by a timeout.
async fn drive<F>(conn: F, activity: &Activity, timeouts: ConnTimeouts) -> Option<F::Output>
where
    F: Future,
{
    if timeouts.read_header.is_none() && timeouts.idle.is_none() {
        return Some(conn.await);
    }
    tokio::pin!(conn);
    loop {
        let now = activity.elapsed();
        let mut next = now.saturating_add(MAX_CHECK_INTERVAL);
        let header_deadline = timeouts
            .read_header
            .zip(activity.awaiting_headers_since())
            .map(|(limit, since)| since.saturating_add(limit));
        let idle_deadline = timeouts
            .idle
            .filter(|_| activity.in_flight() == 0)
            .map(|limit| activity.last_activity().saturating_add(limit));
        for deadline in [header_deadline, idle_deadline].into_iter().flatten() {
            if deadline <= now {
                return None;
            }
            next = next.min(deadline);
        }
        tokio::select! {
            out = &mut conn => return Some(out),
            () = tokio::time::sleep(next.saturating_sub(now)) => {}
        }
    }
}
