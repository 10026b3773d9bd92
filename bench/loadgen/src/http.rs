//! One HTTP/1.1 keep-alive connection to a loopback server, reconnected on failure.
//!
//! Every simulated client owns exactly one of these, so "N connections" in a report means N
//! TCP connections, whatever the server's or a pool's policy would be.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Every request gives up after this long (a stuck server must not hang the suite).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A request to send: method, path and query, optional token, JSON body.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub token: Option<String>,
    pub body: Option<Bytes>,
}

impl Req {
    pub fn get(path: impl Into<String>) -> Self {
        Req {
            method: Method::GET,
            path: path.into(),
            token: None,
            body: None,
        }
    }

    pub fn post(path: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Req {
            method: Method::POST,
            path: path.into(),
            token: None,
            body: Some(body.into()),
        }
    }

    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(str::to_owned);
        self
    }
}

/// A response: status code, body, and Bunker's `X-Bunker-Wal-Index` header when present.
pub struct Resp {
    pub status: u16,
    pub body: Bytes,
    pub wal_index: Option<u64>,
}

impl Resp {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "response {} is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

pub struct Conn {
    addr: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// `addr` is `host:port` (a leading `http://` is accepted and dropped).
    pub fn new(addr: &str) -> Self {
        Conn {
            addr: strip_scheme(addr).to_owned(),
            sender: None,
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| anyhow!("connecting to {}: timed out", self.addr))?
                .with_context(|| format!("connecting to {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (sender, conn) = handshake(TokioIo::new(stream))
                .await
                .with_context(|| format!("HTTP handshake with {}", self.addr))?;
            tokio::spawn(async move {
                // Ends when the connection closes; errors surface on the next request.
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| anyhow!("no connection to {}", self.addr))
    }

    /// Send one request; on a transport error the connection is dropped (the next call
    /// reconnects) and the error returned.
    pub async fn send(&mut self, req: &Req) -> Result<Resp> {
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.send_inner(req)).await;
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(anyhow!("{} {}: timed out", req.method, req.path))
            }
        }
    }

    async fn send_inner(&mut self, req: &Req) -> Result<Resp> {
        let host = self.addr.clone();
        let sender = self.connect().await?;
        sender.ready().await.context("waiting for the connection")?;
        let mut b = Request::builder()
            .method(req.method.clone())
            .uri(&req.path)
            .header("host", host);
        if let Some(t) = &req.token {
            b = b.header("x-vault-token", t);
        }
        if req.body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let request = b.body(Full::new(req.body.clone().unwrap_or_default()))?;
        let resp = sender
            .send_request(request)
            .await
            .with_context(|| format!("{} {}", req.method, req.path))?;
        let status = resp.status().as_u16();
        let wal_index = resp
            .headers()
            .get("x-bunker-wal-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the body of {} {}", req.method, req.path))?
            .to_bytes();
        Ok(Resp {
            status,
            body,
            wal_index,
        })
    }
}

pub fn strip_scheme(addr: &str) -> &str {
    addr.trim_start_matches("http://").trim_end_matches('/')
}
