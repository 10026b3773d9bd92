//! The read-only replication dashboard at `/ui/`: one HTML page, its script and its style
//! sheet, embedded in the binary. The page holds no data, so these routes need no token; the
//! script reads everything from `/v1/` with the user's token, as any API client would.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// No inline script or style, no third-party origin, no framing, no form posts.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The `/ui` and `/ui/` routes; merged in front of the API's fallback handler.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(redirect))
        .route("/ui/", get(index))
        .route("/ui/{file}", get(asset))
}

async fn redirect() -> Response {
    let mut resp = with_headers(StatusCode::MOVED_PERMANENTLY, None, "");
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
    resp
}

async fn index() -> Response {
    with_headers(StatusCode::OK, Some("text/html; charset=utf-8"), INDEX_HTML)
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (status, content_type, body) = match file.as_str() {
        "app.js" => (StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "style.css" => (StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    };
    with_headers(status, Some(content_type), body)
}

/// A response with the dashboard's security headers.
fn with_headers(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: &'static str,
) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    if let Some(ct) = content_type {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}
