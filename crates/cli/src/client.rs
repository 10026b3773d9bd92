//! A small blocking HTTP client for Vault's API (`/v1/...`), shared by all commands.
//!
//! It sends `X-Vault-Token` (and `X-Vault-Wrap-TTL` when wrapping was asked for), decodes JSON
//! bodies with a size limit and turns error statuses into [`ClientError::Api`], which renders
//! exactly like `vault`'s "Error making API request." block.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::blocking::Response;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use serde_json::Value;
use zeroize::Zeroizing;

/// Largest response body the client will read.
const MAX_RESPONSE_BYTES: u64 = 32 * 1024 * 1024;
/// Whole-request timeout (Vault's CLI default is also 60 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout for establishing the TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP verbs Vault's API uses, including its own `LIST`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `GET`
    Get,
    /// `PUT`
    Put,
    /// `POST`
    Post,
    /// `PATCH`
    Patch,
    /// `DELETE`
    Delete,
    /// Vault's `LIST`.
    List,
}

impl Verb {
    /// The method name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Put => "PUT",
            Verb::Post => "POST",
            Verb::Patch => "PATCH",
            Verb::Delete => "DELETE",
            Verb::List => "LIST",
        }
    }

    fn method(self) -> Result<Method, String> {
        match self {
            Verb::Get => Ok(Method::GET),
            Verb::Put => Ok(Method::PUT),
            Verb::Post => Ok(Method::POST),
            Verb::Patch => Ok(Method::PATCH),
            Verb::Delete => Ok(Method::DELETE),
            // An extension method; `from_bytes` only fails on invalid token characters.
            Verb::List => Method::from_bytes(b"LIST").map_err(|e| e.to_string()),
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{}", render_api_error(method, url, *status, errors))]
    Api {
        /// Method name, e.g. `PUT`.
        method: String,
        /// The full request URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The `errors` array of the body, or the raw body when it had none.
        errors: Vec<String>,
    },
    /// The request could not be sent or the response not received.
    #[error("{method} \"{url}\": {message}")]
    Transport {
        /// Method name.
        method: String,
        /// The full request URL.
        url: String,
        /// The error and its causes, joined with ": ".
        message: String,
    },
    /// The server answered with something that is not the JSON it should be.
    #[error("{method} \"{url}\": invalid response: {reason}")]
    InvalidResponse {
        /// Method name.
        method: String,
        /// The full request URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The token cannot be sent as a header (e.g. contains a newline).
    #[error("the token contains characters that cannot be sent in an HTTP header")]
    InvalidToken,
}

fn render_api_error(method: &str, url: &str, status: u16, errors: &[String]) -> String {
    let mut out = format!("Error making API request.\n\nURL: {method} {url}\n");
    if errors.is_empty() {
        out.push_str(&format!("Code: {status}. Errors:\n"));
    } else {
        out.push_str(&format!("Code: {status}. Errors:\n\n"));
        let bullets: Vec<String> = errors.iter().map(|e| format!("* {e}")).collect();
        out.push_str(&bullets.join("\n"));
    }
    out
}

/// Where and how to connect; built from global flags and the environment.
pub struct ClientConfig {
    /// Server address, e.g. `https://127.0.0.1:8200`.
    pub address: String,
    /// The token to send, if any.
    pub token: Option<Zeroizing<String>>,
    /// PEM file with the CA certificate(s) to trust instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Do not verify the server's TLS certificate.
    pub skip_verify: bool,
    /// Ask the server to response-wrap with this TTL.
    pub wrap_ttl: Option<String>,
}

/// One API call.
pub struct ApiRequest {
    verb: Verb,
    path: String,
    query: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    content_type: &'static str,
    not_found_ok: bool,
    wrap: bool,
    token: Option<Zeroizing<String>>,
    /// Replaces the client's whole-request timeout (snapshots take longer than 60 s).
    timeout: Option<Duration>,
    /// Told the bytes of the body sent so far, as it is sent (large uploads).
    on_sent: Option<Box<dyn FnMut(u64) + Send>>,
}

/// Whole-request timeout of a snapshot download or upload.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60 * 60);

impl ApiRequest {
    /// A request for `verb` on the API path (without the `/v1/` prefix).
    pub fn new(verb: Verb, path: impl Into<String>) -> Self {
        ApiRequest {
            verb,
            path: path.into(),
            query: Vec::new(),
            body: None,
            content_type: "application/json",
            not_found_ok: false,
            wrap: true,
            token: None,
            timeout: None,
            on_sent: None,
        }
    }

    /// Calls `on_sent` with the bytes of the body sent so far while it is sent.
    pub fn on_sent(mut self, on_sent: impl FnMut(u64) + Send + 'static) -> Self {
        self.on_sent = Some(Box::new(on_sent));
        self
    }

    /// Sends `body` as a file (`application/octet-stream`), with [`TRANSFER_TIMEOUT`].
    pub fn file(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self.content_type = "application/octet-stream";
        self.transfer()
    }

    /// Allows [`TRANSFER_TIMEOUT`] instead of the usual 60 s.
    pub fn transfer(mut self) -> Self {
        self.timeout = Some(TRANSFER_TIMEOUT);
        self
    }

    /// Sends `body` as JSON.
    pub fn json(mut self, body: &Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self
    }

    /// Sends `body` as a JSON merge patch (`application/merge-patch+json`).
    pub fn merge_patch(mut self, body: &Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self.content_type = "application/merge-patch+json";
        self
    }

    /// Adds a query parameter.
    pub fn query(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_string(), value.into()));
        self
    }

    /// Treats 404 as "nothing there" instead of an error (Vault's read/list behaviour).
    pub fn not_found_ok(mut self) -> Self {
        self.not_found_ok = true;
        self
    }

    /// Never asks the server to wrap this response (used for internal look-ups).
    pub fn without_wrapping(mut self) -> Self {
        self.wrap = false;
        self
    }

    /// Sends this token instead of the configured one.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(Zeroizing::new(token.to_string()));
        self
    }
}

/// The decoded answer to an [`ApiRequest`].
#[derive(Debug)]
pub struct ApiResponse {
    /// The JSON body; `None` for an empty body (204) or an empty 404.
    pub body: Option<Value>,
}

/// The client all commands use.
pub struct Client {
    http: reqwest::blocking::Client,
    address: String,
    token: Option<Zeroizing<String>>,
    wrap_ttl: Option<String>,
}

impl Client {
    /// Builds a client; fails on an unreadable or invalid CA bundle.
    pub fn new(config: ClientConfig) -> Result<Self, String> {
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| format!("reading CA certificate {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("parsing CA certificate {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "no certificates found in CA file {}",
                    path.display()
                ));
            }
            builder = builder.tls_certs_only(certs);
        }
        if config.skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| error_chain(&e))?;
        Ok(Client {
            http,
            address: config.address,
            token: config.token,
            wrap_ttl: config.wrap_ttl,
        })
    }

    /// Sends the request. Error statuses become [`ClientError::Api`], except a 404 on a
    /// request marked [`ApiRequest::not_found_ok`], which returns `body: None` unless the
    /// body carries data or warnings (KV v2 answers 404 with metadata for deleted versions).
    pub fn send(&self, request: ApiRequest) -> Result<ApiResponse, ClientError> {
        let (verb, not_found_ok) = (request.verb, request.not_found_ok);
        let (response, url, transport) = self.start(request)?;
        let status = response.status().as_u16();
        let text = read_limited(response).map_err(transport)?;
        decode(verb, url, status, &text, not_found_ok)
    }

    /// Sends the request and copies a successful answer's body, however large, into `out`;
    /// returns the bytes copied. An error status is decoded as by [`Client::send`].
    pub fn download(
        &self,
        request: ApiRequest,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, ClientError> {
        let verb = request.verb;
        let (mut response, url, transport) = self.start(request)?;
        let status = response.status().as_u16();
        if status >= 400 {
            let text = read_limited(response).map_err(transport)?;
            return decode(verb, url, status, &text, false).map(|_| 0);
        }
        std::io::copy(&mut response, out)
            .map_err(|e| transport(format!("reading response body: {e}")))
    }

    /// Sends the request; returns the response, its URL, and the transport error maker.
    #[allow(clippy::type_complexity)]
    fn start(
        &self,
        request: ApiRequest,
    ) -> Result<(Response, String, Box<dyn Fn(String) -> ClientError>), ClientError> {
        let url = api_url(&self.address, &request.path, &request.query);
        let method_name = request.verb.as_str().to_string();
        let transport_url = url.clone();
        let transport = move |message: String| ClientError::Transport {
            method: method_name.clone(),
            url: transport_url.clone(),
            message,
        };
        let method = request.verb.method().map_err(&transport)?;
        let headers = self.headers(&request).map_err(|e| match e {
            HeaderError::Token => ClientError::InvalidToken,
            HeaderError::WrapTtl => transport("the wrap TTL is not a valid header value".into()),
        })?;
        let mut builder = self.http.request(method, &url).headers(headers);
        if let Some(body) = request.body {
            builder = builder.header(CONTENT_TYPE, request.content_type);
            builder = match request.on_sent {
                None => builder.body(body),
                Some(on_sent) => {
                    let len = body.len() as u64;
                    let reader = CountingReader {
                        inner: std::io::Cursor::new(body),
                        sent: 0,
                        on_sent,
                    };
                    builder.body(reqwest::blocking::Body::sized(reader, len))
                }
            };
        }
        if let Some(timeout) = request.timeout {
            builder = builder.timeout(timeout);
        }
        let response = builder.send().map_err(|e| transport(cause_chain(&e)))?;
        Ok((response, url, Box::new(transport)))
    }

    fn headers(&self, request: &ApiRequest) -> Result<HeaderMap, HeaderError> {
        let mut headers = HeaderMap::new();
        headers.insert("X-Vault-Request", HeaderValue::from_static("true"));
        if let Some(token) = request.token.as_ref().or(self.token.as_ref()) {
            let mut value =
                HeaderValue::from_str(token.as_str()).map_err(|_| HeaderError::Token)?;
            value.set_sensitive(true);
            headers.insert("X-Vault-Token", value);
        }
        if let (true, Some(ttl)) = (request.wrap, &self.wrap_ttl) {
            let value = HeaderValue::from_str(ttl).map_err(|_| HeaderError::WrapTtl)?;
            headers.insert("X-Vault-Wrap-TTL", value);
        }
        Ok(headers)
    }
}

/// A request body that reports how much of it was read (sent) so far.
struct CountingReader {
    inner: std::io::Cursor<Vec<u8>>,
    sent: u64,
    on_sent: Box<dyn FnMut(u64) + Send>,
}

impl std::io::Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent += n as u64;
        (self.on_sent)(self.sent);
        Ok(n)
    }
}

/// Turns a status and body into a response or an error (see [`Client::send`]).
fn decode(
    verb: Verb,
    url: String,
    status: u16,
    text: &str,
    not_found_ok: bool,
) -> Result<ApiResponse, ClientError> {
    let parsed: Option<Value> = if text.trim().is_empty() {
        None
    } else {
        serde_json::from_str(text).ok()
    };
    if status == 404 && not_found_ok {
        let body = parsed.filter(has_data_or_warnings);
        return Ok(ApiResponse { body });
    }
    if status >= 400 {
        let errors = parsed
            .as_ref()
            .map(api_errors)
            .filter(|errors| !errors.is_empty())
            .unwrap_or_else(|| raw_message(text));
        return Err(ClientError::Api {
            method: verb.to_string(),
            url,
            status,
            errors,
        });
    }
    if parsed.is_none() && !text.trim().is_empty() {
        return Err(ClientError::InvalidResponse {
            method: verb.to_string(),
            url,
            reason: "body is not JSON".into(),
        });
    }
    Ok(ApiResponse { body: parsed })
}

/// Which header value could not be encoded.
enum HeaderError {
    Token,
    WrapTtl,
}

/// Reads the body, at most [`MAX_RESPONSE_BYTES`].
fn read_limited(response: Response) -> Result<String, String> {
    let mut bytes = Vec::new();
    response
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading response body: {e}"))?;
    if bytes.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(format!(
            "response body larger than {MAX_RESPONSE_BYTES} bytes"
        ));
    }
    String::from_utf8(bytes).map_err(|_| "response body is not UTF-8".to_string())
}

fn has_data_or_warnings(body: &Value) -> bool {
    let data = body.get("data").is_some_and(|d| !d.is_null());
    let warnings = body
        .get("warnings")
        .and_then(Value::as_array)
        .is_some_and(|w| !w.is_empty());
    data || warnings
}

/// The messages in a Vault error body (`{"errors": ["..."]}`).
pub fn api_errors(body: &Value) -> Vec<String> {
    body.get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .map(|e| match e {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn raw_message(text: &str) -> Vec<String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        Vec::new()
    } else {
        vec![trimmed.chars().take(4096).collect()]
    }
}

/// An error and all its sources, joined with ": " (reqwest hides the useful part in sources).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The causes of a transport error, without reqwest's own "error sending request for url
/// (...)" wrapper, which repeats the URL already shown.
fn cause_chain(err: &reqwest::Error) -> String {
    match std::error::Error::source(err) {
        Some(cause) => error_chain(cause),
        None => err.to_string(),
    }
}

/// `address` + `/v1/` + the percent-encoded path + query string.
pub fn api_url(address: &str, path: &str, query: &[(String, String)]) -> String {
    let mut url = format!(
        "{}/v1/{}",
        address.trim_end_matches('/'),
        encode(path.trim_start_matches('/'), true)
    );
    for (i, (key, value)) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&encode(key, false));
        url.push('=');
        url.push_str(&encode(value, false));
    }
    url
}

/// Percent-encodes what cannot appear literally. Paths keep every RFC 3986 `pchar` and `/`
/// (so `users/ann@example.com` or `app:db` reach the server unchanged); query parts keep only
/// unreserved characters.
fn encode(text: &str, is_path: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~');
        let path_safe = matches!(
            byte,
            b'/' | b':'
                | b'@'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        );
        if unreserved || (is_path && path_safe) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn url_joins_address_and_path() {
        assert_eq!(
            api_url("http://127.0.0.1:8200/", "/secret/data/foo", &[]),
            "http://127.0.0.1:8200/v1/secret/data/foo"
        );
        let query = vec![("version".to_string(), "3".to_string())];
        assert_eq!(
            api_url("https://h:1", "secret/data/a b?#%", &query),
            "https://h:1/v1/secret/data/a%20b%3F%23%25?version=3"
        );
        assert_eq!(
            api_url("http://h", "secret/data/ann@example.com:x+y", &[]),
            "http://h/v1/secret/data/ann@example.com:x+y"
        );
        let query = vec![("k".to_string(), "a&b=c".to_string())];
        assert_eq!(
            api_url("http://h", "p", &query),
            "http://h/v1/p?k=a%26b%3Dc"
        );
    }

    #[test]
    fn error_body_messages_are_extracted() {
        let body = json!({"errors": ["permission denied", {"x": 1}]});
        assert_eq!(api_errors(&body), vec!["permission denied", "{\"x\":1}"]);
        assert!(api_errors(&json!({})).is_empty());
    }

    #[test]
    fn not_found_with_data_is_kept() {
        assert!(has_data_or_warnings(&json!({"data": {"metadata": {}}})));
        assert!(!has_data_or_warnings(&json!({"errors": []})));
        assert!(!has_data_or_warnings(
            &json!({"data": null, "warnings": []})
        ));
        assert!(has_data_or_warnings(&json!({"warnings": ["w"]})));
    }

    #[test]
    fn statuses_decode_like_vault() {
        let url = "http://h/v1/x".to_string();
        let ok = decode(Verb::Get, url.clone(), 200, r#"{"data": {"a": 1}}"#, false);
        assert!(matches!(ok, Ok(ApiResponse { body: Some(_) })));
        let empty = decode(Verb::Put, url.clone(), 204, "", false);
        assert!(matches!(empty, Ok(ApiResponse { body: None })));
        let missing = decode(Verb::Get, url.clone(), 404, r#"{"errors": []}"#, true);
        assert!(matches!(missing, Ok(ApiResponse { body: None })));
        let denied = decode(Verb::Get, url.clone(), 403, r#"{"errors": ["no"]}"#, true);
        assert!(
            matches!(denied, Err(ClientError::Api { status: 403, ref errors, .. }) if errors == &["no"])
        );
        let raw = decode(Verb::Get, url.clone(), 502, "bad gateway", false);
        assert!(
            matches!(raw, Err(ClientError::Api { ref errors, .. }) if errors == &["bad gateway"])
        );
        let garbage = decode(Verb::Get, url, 200, "<html>", false);
        assert!(matches!(garbage, Err(ClientError::InvalidResponse { .. })));
    }

    #[test]
    fn api_error_without_messages() {
        let rendered = render_api_error("GET", "http://x/v1/a", 500, &[]);
        assert_eq!(
            rendered,
            "Error making API request.\n\nURL: GET http://x/v1/a\nCode: 500. Errors:\n"
        );
    }

    #[test]
    fn list_is_sent_as_its_own_method() {
        assert_eq!(
            Verb::List.method().map(|m| m.to_string()).ok(),
            Some("LIST".into())
        );
    }
}
