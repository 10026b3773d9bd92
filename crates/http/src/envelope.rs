//! Vault's response envelope.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::Json;
use bunker_sdk::{LogicalError, Operation, Response};
use serde_json::{json, Value};

use crate::status;

pub fn to_http(
    request_id: &str,
    operation: Operation,
    result: Result<Response, LogicalError>,
) -> HttpResponse {
    let resp = match result {
        Ok(r) => r,
        Err(e) => return status::from_error(&e),
    };
    if let Some(raw) = resp.raw {
        let code = StatusCode::from_u16(raw.status).unwrap_or(StatusCode::OK);
        if let (Some(content_type), Value::String(text)) = (raw.content_type, &raw.body) {
            return (
                code,
                [(axum::http::header::CONTENT_TYPE, content_type)],
                text.clone(),
            )
                .into_response();
        }
        return (code, Json(raw.body)).into_response();
    }
    let empty_list = operation == Operation::List
        && resp
            .data
            .as_ref()
            .and_then(|d| d.get("keys"))
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty);
    if empty_list || (operation == Operation::Read && resp.is_empty()) {
        return status::error_response(StatusCode::NOT_FOUND, vec![]);
    }
    if resp.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let warnings = if resp.warnings.is_empty() {
        Value::Null
    } else {
        json!(resp.warnings)
    };
    let mut body = json!({
        "request_id": request_id,
        "lease_id": resp.lease_id,
        "renewable": resp.renewable,
        "lease_duration": resp.lease_duration,
        "data": resp.data,
        "wrap_info": resp.wrap_info,
        "warnings": warnings,
        "auth": resp.auth,
        "mount_type": "",
    });
    if resp.data_at_top_level {
        if let (Value::Object(top), Some(data)) = (&mut body, &resp.data) {
            for (k, v) in data {
                top.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    (StatusCode::OK, Json(body)).into_response()
}
