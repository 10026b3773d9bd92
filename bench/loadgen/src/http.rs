//! One HTTP/1.1 keep-alive connection to a loopback server, reconnected on failure.
//!
//! Every simulated client owns exactly one of these, so "N connections" in a report means N
//! TCP connections, whatever the server's or a pool's policy would be.
//!
//! Design reason: the client task writes its request and reads the answer on its own socket
//! (`httparse` for the head), with no connection task, channel or header map between them.
//! The load generator shares the machine's two cores with the server it measures: hyper's
//! client (a connection task fed through a channel) cost ~22 µs of CPU per request, a fifth of
//! the machine at 64 connections, and that CPU was missing from both servers alike
//! (bench/README.md, "The load generator's own CPU").

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every request gives up after this long (a stuck server must not hang the suite).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A response head larger than this, or with more headers, is refused.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// A response body larger than this is refused (the largest the benches read is a status).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A request to send: method, path and query, optional token, JSON body.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub token: Option<String>,
    pub body: Option<Bytes>,
}

impl Req {
    pub fn get(path: impl Into<String>) -> Self {
        Req {
            method: "GET",
            path: path.into(),
            token: None,
            body: None,
        }
    }

    pub fn post(path: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Req {
            method: "POST",
            path: path.into(),
            token: None,
            body: Some(body.into()),
        }
    }

    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(str::to_owned);
        self
    }

    /// The request as it goes on the wire.
    fn encode(&self, host: &str, out: &mut Vec<u8>) {
        out.clear();
        for part in [
            self.method,
            " ",
            &self.path,
            " HTTP/1.1\r\nhost: ",
            host,
            "\r\n",
        ] {
            out.extend_from_slice(part.as_bytes());
        }
        if let Some(token) = &self.token {
            out.extend_from_slice(b"x-vault-token: ");
            out.extend_from_slice(token.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(body) = &self.body {
            out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
            out.extend_from_slice(body.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(body);
        } else {
            out.extend_from_slice(b"\r\n");
        }
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

/// How a response's body is delimited (RFC 9112, section 6.3).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// What the head of a response says.
#[derive(Debug)]
struct Head {
    len: usize,
    status: u16,
    framing: Framing,
    close: bool,
    wal_index: Option<u64>,
}

/// Parses a response head from the start of `buf`; `None` while it is incomplete.
fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf).context("parsing the response head")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() > MAX_HEAD => bail!("response head too large"),
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.unwrap_or_default();
    let mut length = None;
    // The last transfer coding: `Some(true)` when it is chunked.
    let mut chunked = None;
    let mut close = resp.version == Some(0);
    let mut wal_index = None;
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or_default().trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<usize>().context("content-length")?;
            if length.is_some_and(|m| m != n) {
                bail!("conflicting content-length headers");
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .map(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        } else if h.name.eq_ignore_ascii_case("x-bunker-wal-index") {
            wal_index = value.parse().ok();
        }
    }
    // RFC 9112, section 6.3, in its order.
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::None
    } else if let Some(chunked) = chunked {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            bail!("response body of {n} bytes is too large");
        }
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some(Head {
        len,
        status,
        close: close || framing == Framing::UntilClose,
        framing,
        wal_index,
    }))
}

/// Takes a whole chunked body from the start of `buf` (its chunks and trailers);
/// `None` while it is incomplete. Called again after every read, so it walks the chunk
/// headers only and copies the data once, when the body is whole.
fn take_chunked(buf: &mut BytesMut) -> Result<Option<Bytes>> {
    let mut chunks = Vec::new();
    let mut total = 0usize;
    let mut at = 0;
    loop {
        let rest = buf.get(at..).unwrap_or_default();
        let (skip, size) = match httparse::parse_chunk_size(rest)
            .map_err(|_| anyhow!("invalid chunk size line"))?
        {
            httparse::Status::Complete(found) => found,
            httparse::Status::Partial => return Ok(None),
        };
        let size = usize::try_from(size).context("chunk size")?;
        total = total.saturating_add(size);
        if total > MAX_BODY {
            bail!("chunked response body too large");
        }
        at += skip;
        if size == 0 {
            break;
        }
        chunks.push(at..at + size);
        at += size;
        match buf.get(at..at + 2) {
            None => return Ok(None),
            Some(b"\r\n") => at += 2,
            Some(_) => bail!("chunk not followed by CRLF"),
        }
    }
    // Trailer fields, then an empty line.
    loop {
        let rest = buf.get(at..).unwrap_or_default();
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        at += end + 2;
        if end == 0 {
            break;
        }
    }
    let mut body = Vec::with_capacity(total);
    for chunk in chunks {
        body.extend_from_slice(buf.get(chunk).unwrap_or_default());
    }
    buf.advance(at);
    Ok(Some(body.into()))
}

pub struct Conn {
    addr: String,
    stream: Option<TcpStream>,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// The request being sent (kept to reuse its allocation).
    write: Vec<u8>,
}

impl Conn {
    /// `addr` is `host:port` (a leading `http://` is accepted and dropped).
    pub fn new(addr: &str) -> Self {
        Conn {
            addr: strip_scheme(addr).to_owned(),
            stream: None,
            read: BytesMut::with_capacity(8 * 1024),
            write: Vec::with_capacity(1024),
        }
    }

    /// Send one request; on a transport error the connection is dropped (the next call
    /// reconnects) and the error returned.
    pub async fn send(&mut self, req: &Req) -> Result<Resp> {
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.send_inner(req)).await;
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e.context(format!("{} {}", req.method, req.path)))
            }
            Err(_) => {
                self.stream = None;
                Err(anyhow!("{} {}: timed out", req.method, req.path))
            }
        }
    }

    async fn send_inner(&mut self, req: &Req) -> Result<Resp> {
        req.encode(&self.addr, &mut self.write);
        // A kept-alive connection is checked before it is used, never after: a request that
        // may have reached the server is not sent again (a write applied twice would count
        // once). A connection the server closed while it was idle reads as ended; one with
        // bytes nobody asked for is out of step. Either is replaced.
        if self.stream.as_ref().is_some_and(|s| !still_open(s)) {
            self.stream = None;
        }
        let stream = match self.stream.as_mut() {
            Some(stream) => stream,
            None => {
                let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(&self.addr))
                    .await
                    .map_err(|_| anyhow!("connecting to {}: timed out", self.addr))?
                    .with_context(|| format!("connecting to {}", self.addr))?;
                stream.set_nodelay(true)?;
                self.stream.insert(stream)
            }
        };
        let (resp, close) = exchange(stream, &mut self.read, &self.write, req).await?;
        if close {
            self.stream = None;
        }
        Ok(resp)
    }
}

/// Whether an idle kept-alive connection can take a request: nothing to read (no end of
/// stream, no unasked-for bytes) and no error.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Writes `request` and reads its response; with it, whether the connection must be closed
/// after it (the server said so, or sent more than the response).
async fn exchange(
    stream: &mut TcpStream,
    read: &mut BytesMut,
    request: &[u8],
    req: &Req,
) -> Result<(Resp, bool)> {
    read.clear();
    stream
        .write_all(request)
        .await
        .context("writing the request")?;
    let head = loop {
        match parse_head(read, req.method == "HEAD")? {
            // An interim answer (100 Continue, 103 Early Hints) precedes the real one.
            Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                read.advance(head.len);
                continue;
            }
            Some(head) => break head,
            None => {}
        }
        read.reserve(8 * 1024);
        let n = stream
            .read_buf(read)
            .await
            .context("reading the response head")?;
        if n == 0 {
            bail!("the connection closed before the response head ended");
        }
    };
    read.advance(head.len);
    let body = loop {
        let done = match head.framing {
            Framing::None => Some(Bytes::new()),
            Framing::Length(n) => (read.len() >= n).then(|| read.split_to(n).freeze()),
            Framing::Chunked => take_chunked(read)?,
            Framing::UntilClose => None,
        };
        if let Some(body) = done {
            break body;
        }
        if read.len() > MAX_BODY {
            bail!("response body too large");
        }
        read.reserve(8 * 1024);
        if stream
            .read_buf(read)
            .await
            .context("reading the response body")?
            == 0
        {
            if head.framing == Framing::UntilClose {
                break read.split().freeze();
            }
            bail!("connection closed inside the response body");
        }
    };
    let resp = Resp {
        status: head.status,
        body,
        wal_index: head.wal_index,
    };
    // Bytes past the response belong to no request: the connection is out of step.
    Ok((resp, head.close || !read.is_empty()))
}

pub fn strip_scheme(addr: &str) -> &str {
    addr.trim_start_matches("http://").trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_encoded_with_their_token_and_length() {
        let mut out = Vec::new();
        Req::post("/v1/secret/data/a", "{}")
            .with_token(Some("t"))
            .encode("127.0.0.1:8200", &mut out);
        assert_eq!(
            out,
            b"POST /v1/secret/data/a HTTP/1.1\r\nhost: 127.0.0.1:8200\r\nx-vault-token: t\r\n\
              content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        Req::get("/v1/sys/health").encode("h", &mut out);
        assert_eq!(out, b"GET /v1/sys/health HTTP/1.1\r\nhost: h\r\n\r\n");
    }

    #[test]
    fn heads_give_status_framing_and_wal_index() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Bunker-Wal-Index: 42\r\n\r\nhello";
        assert!(parse_head(&raw[..20], false).unwrap().is_none());
        let head = parse_head(raw, false).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Length(5));
        assert_eq!(head.wal_index, Some(42));
        assert!(!head.close);
        assert_eq!(&raw[head.len..], b"hello");

        let head = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::None);
        let head = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::UntilClose);
        assert!(head.close);
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = parse_head(chunked, false).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        let twice = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n";
        assert!(parse_head(twice, false).is_err());
        let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n";
        let head = parse_head(gzip, false).unwrap().unwrap();
        assert_eq!(head.framing, Framing::UntilClose);
        let two = b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_head(two, false).unwrap().unwrap().close);
    }

    /// A loopback listener and its address.
    async fn listen() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (listener, addr)
    }

    /// Reads one bodiless request's head from `stream`.
    async fn read_request(stream: &mut TcpStream) {
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
            got.extend_from_slice(&byte);
        }
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced() {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            // First connection: one answer, then closed while the client is idle.
            let (mut first, _) = listener.accept().await.unwrap();
            read_request(&mut first).await;
            first
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Bunker-Wal-Index: 7\r\n\r\nok",
                )
                .await
                .unwrap();
            drop(first);
            // Second connection: an interim answer and a chunked one with a trailer, then one
            // that ends at close.
            let (mut second, _) = listener.accept().await.unwrap();
            read_request(&mut second).await;
            second
                .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: y\r\n\r\n")
                .await
                .unwrap();
            read_request(&mut second).await;
            second
                .write_all(b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\nlater")
                .await
                .unwrap();
        });
        let mut conn = Conn::new(&format!("http://{addr}"));
        let first = conn.send(&Req::get("/a")).await.unwrap();
        assert_eq!((first.status, &first.body[..]), (200, &b"ok"[..]));
        assert_eq!(first.wal_index, Some(7));
        // Wait until the server's close has reached the client's socket.
        let idle = conn.stream.as_ref().unwrap();
        idle.readable().await.unwrap();
        assert!(!still_open(idle));
        let second = conn.send(&Req::get("/b")).await.unwrap();
        assert_eq!((second.status, &second.body[..]), (200, &b"abc"[..]));
        assert_eq!(second.wal_index, None);
        let third = conn.send(&Req::get("/c")).await.unwrap();
        assert_eq!((third.status, &third.body[..]), (503, &b"later"[..]));
        assert!(!third.ok());
        assert!(
            conn.stream.is_none(),
            "a close-delimited answer ends the connection"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_request_that_reached_the_server_is_not_sent_again() {
        let (listener, addr) = listen().await;
        let mut conn = Conn::new(&addr);
        let client = tokio::spawn(async move { conn.send(&Req::post("/w", "{}")).await });
        // The request arrives and the connection closes before any answer.
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await;
        let mut body = [0u8; 2];
        stream.read_exact(&mut body).await.unwrap();
        drop(stream);
        assert!(client.await.unwrap().is_err());
        // No second connection is waiting to be accepted: the write was not repeated.
        let listener = listener.into_std().unwrap();
        listener.set_nonblocking(true).unwrap();
        let again = listener.accept().map(|_| ());
        assert_eq!(
            again.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock)
        );
    }

    #[tokio::test]
    async fn bytes_past_a_response_end_its_connection() {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_request(&mut stream).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
                .await
                .unwrap();
            stream
        });
        let mut conn = Conn::new(&addr);
        let resp = conn.send(&Req::get("/a")).await.unwrap();
        assert_eq!(&resp.body[..], b"ok");
        assert!(
            conn.stream.is_none(),
            "an out-of-step connection is not reused"
        );
        drop(server.await.unwrap());
    }

    #[test]
    fn chunked_bodies_are_joined_and_wait_for_their_end() {
        let whole = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nnext";
        for cut in 0..whole.len() - 4 {
            let mut partial = BytesMut::from(&whole[..cut]);
            assert!(
                take_chunked(&mut partial).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        let mut buf = BytesMut::from(&whole[..]);
        assert_eq!(take_chunked(&mut buf).unwrap().unwrap(), "hello world");
        assert_eq!(&buf[..], b"next");
        let mut bad = BytesMut::from(&b"2\r\nabXY"[..]);
        assert!(take_chunked(&mut bad).is_err());
    }
}
