//! Reading and decoding request bodies with bounded time and memory: at most
//! `max_request_bytes` read into one buffer within `http_read_timeout`, and a JSON body parsed
//! only when its number of values is small for its size, so that a body of N bytes costs a
//! small multiple of N (a JSON value takes tens of bytes in memory, however short its text).

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::{header, HeaderMap};
use bunker_sdk::{Data, LogicalError};
use serde_json::Value;

/// Largest buffer reserved up front from a `Content-Length` header; more grows as bytes come.
const MAX_PREALLOCATION: usize = 1 << 20;
/// JSON values and members any body may hold, whatever its size.
const BASE_JSON_ITEMS: usize = 64 * 1024;
/// Beyond [`BASE_JSON_ITEMS`], one JSON item is allowed per this many body bytes.
const BYTES_PER_JSON_ITEM: usize = 16;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    TooLarge,
    TimedOut,
    Broken,
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Read the whole body, refusing it once it passes `limit` bytes or takes longer than
/// `timeout` (zero: no time limit).
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    read_body_counted(body, headers, limit, timeout, None).await
}

/// [`read_body`], adding the bytes read so far to `received` as they come (a restore's
/// progress).
pub(crate) async fn read_body_counted(
    mut body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
    received: Option<&std::sync::atomic::AtomicU64>,
) -> Result<Vec<u8>, BodyError> {
    let declared = content_length(headers);
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let read = async move {
        let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(MAX_PREALLOCATION));
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.map_err(|_| BodyError::Broken)?;
            if let Ok(data) = frame.into_data() {
                if buf.len().saturating_add(data.len()) > limit {
                    return Err(BodyError::TooLarge);
                }
                buf.extend_from_slice(&data);
                if let Some(received) = received {
                    received.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Ok(buf)
    };
    if timeout.is_zero() {
        return read.await;
    }
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| BodyError::TimedOut)?
}

/// An upper bound on the values and object members in a JSON text: one per `,` `:` `[` `{`
/// outside strings, plus one. Strings (most of a secret's bytes) are skipped with `memchr`
/// rather than byte by byte: the byte loop cost more than the JSON parse after it.
fn json_items(bytes: &[u8]) -> usize {
    let mut items = 1usize;
    let mut at = 0usize;
    while let Some(&b) = bytes.get(at) {
        at += 1;
        match b {
            b'"' => loop {
                // The next quote or backslash; a backslash escapes the byte after it.
                let Some(found) = bytes
                    .get(at..)
                    .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                else {
                    return items;
                };
                at += found;
                let quote = bytes.get(at) == Some(&b'"');
                at += if quote { 1 } else { 2 };
                if quote {
                    break;
                }
            },
            b',' | b':' | b'[' | b'{' => items = items.saturating_add(1),
            _ => {}
        }
    }
    items
}

/// Decode a request body: empty or `null` is no data, otherwise a JSON object. Any bytes are
/// an answer, never a panic (fuzzed: `fuzz/`).
pub fn parse_body(bytes: &[u8]) -> Result<Data, LogicalError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Data::new());
    }
    let allowed = BASE_JSON_ITEMS.saturating_add(bytes.len() / BYTES_PER_JSON_ITEM);
    if json_items(bytes) > allowed {
        return Err(LogicalError::InvalidRequest(format!(
            "failed to parse JSON input: more than {allowed} values for a body of {} bytes",
            bytes.len()
        )));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Data::new()),
        Ok(_) => Err(LogicalError::InvalidRequest(
            "failed to parse JSON input: request body must be a JSON object".into(),
        )),
        Err(e) => Err(LogicalError::InvalidRequest(format!(
            "failed to parse JSON input: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_parsing() {
        assert!(parse_body(b"").is_ok());
        assert!(parse_body(b"{\"a\":1}").is_ok());
        assert!(parse_body(b"[1]").is_err());
        assert!(parse_body(b"{bad").is_err());
    }

    #[test]
    fn counts_items_outside_strings_only() {
        assert_eq!(json_items(b"{}"), 2);
        assert_eq!(json_items(b"{\"a\":[1,2]}"), 5);
        assert_eq!(json_items(b"{\"a,:[{\":\"x\\\",y\"}"), 3);
        // An escaped backslash ends nothing; the quote after it closes the string.
        assert_eq!(json_items(b"{\"a\\\\\":1,\"b\":2}"), 5);
        // Unterminated strings and a trailing backslash end the count.
        assert_eq!(json_items(b"{\"a"), 2);
        assert_eq!(json_items(b"{\"a\\"), 2);
        assert_eq!(json_items(b"\\"), 1);
    }

    /// The byte-by-byte count `json_items` replaced, as the reference.
    fn json_items_bytewise(bytes: &[u8]) -> usize {
        let mut items = 1usize;
        let (mut in_string, mut escaped) = (false, false);
        for &b in bytes {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b',' | b':' | b'[' | b'{' => items = items.saturating_add(1),
                _ => {}
            }
        }
        items
    }

    #[test]
    fn the_count_matches_the_bytewise_reference_on_random_texts() {
        // Texts drawn from JSON's structural bytes, so strings, escapes and items mix densely.
        let alphabet = b"\"\\,:[{}]a 1";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..2000usize {
            let text: Vec<u8> = (0..len % 97)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            assert_eq!(
                json_items(&text),
                json_items_bytewise(&text),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn dense_bodies_are_refused_before_parsing() {
        let n = BASE_JSON_ITEMS * 2;
        let dense = format!("{{\"a\":[{}0]}}", "0,".repeat(n));
        assert!(parse_body(dense.as_bytes()).is_err());
        // The same size spent in one string is fine.
        let sparse = format!("{{\"a\":\"{}\"}}", "x".repeat(2 * n));
        assert!(parse_body(sparse.as_bytes()).is_ok());
        // A modest list is fine too.
        let list = format!("{{\"a\":[{}0]}}", "1,".repeat(1000));
        assert!(parse_body(list.as_bytes()).is_ok());
    }

    #[tokio::test]
    async fn read_body_enforces_the_size_limit() {
        let headers = HeaderMap::new();
        let ok = read_body(Body::from("{}"), &headers, 2, Duration::from_secs(5)).await;
        assert_eq!(ok.as_deref(), Ok(&b"{}"[..]));
        let big = read_body(Body::from("{ }"), &headers, 2, Duration::ZERO).await;
        assert_eq!(big, Err(BodyError::TooLarge));
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, "100".parse().expect("header value"));
        let big = read_body(Body::from("{}"), &declared, 10, Duration::ZERO).await;
        assert_eq!(big, Err(BodyError::TooLarge));
    }
}
