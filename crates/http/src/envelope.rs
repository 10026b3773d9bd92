//! Vault's response envelope.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::Json;
use bunker_sdk::{Auth, Data, LogicalError, Operation, Response, WrapInfo};
use serde::Serialize;
use serde_json::Value;

use crate::status;

/// Room for the envelope of a typical answer (a KV write's is about 300 bytes): axum's `Json`
/// starts its buffer at 128 bytes, and growing it to 512 cost two more allocations and copies
/// per request.
const ENVELOPE_BYTES: usize = 512;

/// `body` (JSON text) as a 200 answer, as axum's `Json` makes it.
fn json_answer(body: Vec<u8>) -> HttpResponse {
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

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
    // Serialized straight from the response: building a `Value` of the envelope first cost a
    // copy of the data and a map per request (bench/README.md, "Instructions per write").
    let envelope = Envelope::of(request_id, &resp);
    if !resp.data_at_top_level {
        let mut body = Vec::with_capacity(ENVELOPE_BYTES);
        return match envelope.write(&mut body) {
            Ok(()) => json_answer(body),
            Err(e) => status::from_error(&LogicalError::Internal(e.to_string())),
        };
    }
    // An older sys endpoint's answer also repeats its data at the top level, where the
    // envelope's own fields win.
    let mut body = match serde_json::to_value(&envelope) {
        Ok(body) => body,
        Err(e) => return status::from_error(&LogicalError::Internal(e.to_string())),
    };
    if let (Value::Object(top), Some(data)) = (&mut body, &resp.data) {
        for (k, v) in data {
            top.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// Vault's envelope of a response (an absent part is `null`).
#[derive(Serialize)]
struct Envelope<'a> {
    request_id: &'a str,
    lease_id: &'a str,
    renewable: bool,
    lease_duration: u64,
    data: Option<&'a Data>,
    wrap_info: Option<&'a WrapInfo>,
    warnings: Option<&'a Vec<String>>,
    auth: Option<&'a Auth>,
    mount_type: &'static str,
}

impl<'a> Envelope<'a> {
    fn of(request_id: &'a str, resp: &'a Response) -> Envelope<'a> {
        Envelope {
            request_id,
            lease_id: &resp.lease_id,
            renewable: resp.renewable,
            lease_duration: resp.lease_duration,
            data: resp.data.as_ref(),
            wrap_info: resp.wrap_info.as_deref(),
            warnings: (!resp.warnings.is_empty()).then_some(&resp.warnings),
            auth: resp.auth.as_deref(),
            mount_type: "",
        }
    }

    /// Appends the bytes `serde_json::to_writer` writes for the envelope (a test compares
    /// them): its field names as they are, its strings and data through
    /// `bunker_sdk::json_text` (serde_json escapes every name and string a byte at a time).
    fn write(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        use bunker_sdk::json_text::{write_map, write_str};
        out.extend_from_slice(b"{\"request_id\":");
        write_str(out, self.request_id);
        out.extend_from_slice(b",\"lease_id\":");
        write_str(out, self.lease_id);
        out.extend_from_slice(if self.renewable {
            b",\"renewable\":true,\"lease_duration\":"
        } else {
            b",\"renewable\":false,\"lease_duration\":"
        });
        serde_json::to_writer(&mut *out, &self.lease_duration)?;
        out.extend_from_slice(b",\"data\":");
        match self.data {
            Some(data) => write_map(out, data),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"wrap_info\":");
        serde_json::to_writer(&mut *out, &self.wrap_info)?;
        out.extend_from_slice(b",\"warnings\":");
        serde_json::to_writer(&mut *out, &self.warnings)?;
        out.extend_from_slice(b",\"auth\":");
        serde_json::to_writer(&mut *out, &self.auth)?;
        out.extend_from_slice(b",\"mount_type\":");
        write_str(out, self.mount_type);
        out.push(b'}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn body_of(resp: HttpResponse) -> Value {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn full_response() -> Response {
        let mut data = Data::new();
        data.insert("version".into(), json!(3));
        data.insert("nested".into(), json!({"a": [1, 2]}));
        Response {
            data: Some(data),
            auth: Some(Box::new(Auth {
                client_token: "hvs.x".into(),
                policies: vec!["default".into()],
                ..Auth::default()
            })),
            warnings: vec!["careful".into()],
            wrap_info: Some(Box::new(WrapInfo {
                token: "hvs.w".into(),
                accessor: "acc".into(),
                ttl: 60,
                creation_time: "2026-12-03T00:00:00Z".into(),
                creation_path: "secret/data/a".into(),
                wrapped_accessor: String::new(),
            })),
            lease_duration: 30,
            lease_id: "lease/1".into(),
            renewable: true,
            ..Response::default()
        }
    }

    /// The envelope serialized straight from the response holds what the `Value` it replaced
    /// held, field for field.
    #[tokio::test]
    async fn the_envelope_holds_every_part_of_the_response() {
        let resp = full_response();
        let expected = json!({
            "request_id": "req-1",
            "lease_id": resp.lease_id,
            "renewable": resp.renewable,
            "lease_duration": resp.lease_duration,
            "data": resp.data,
            "wrap_info": resp.wrap_info,
            "warnings": resp.warnings,
            "auth": resp.auth,
            "mount_type": "",
        });
        let answer = to_http("req-1", Operation::Update, Ok(resp));
        assert_eq!(answer.status(), StatusCode::OK);
        let content_type = answer.headers().get_all(axum::http::header::CONTENT_TYPE);
        assert_eq!(
            content_type.iter().collect::<Vec<_>>(),
            ["application/json"],
            "one content type, JSON's"
        );
        assert_eq!(body_of(answer).await, expected);
    }

    /// The envelope written by hand is serde_json's text of it, byte for byte.
    #[test]
    fn the_envelope_is_written_as_serde_json_writes_it() {
        let full = full_response();
        let mut quoted = Data::new();
        quoted.insert("k\"ey\n".into(), json!("a \\ \"b\" \u{1} é 値"));
        quoted.insert("n".into(), json!([1.5, -2, null, true, {"x": "y"}]));
        let bare = Response::data(quoted);
        let empty = Response::default();
        for (resp, id) in [(&full, "req-1"), (&bare, "r\"2"), (&empty, "")] {
            let envelope = Envelope::of(id, resp);
            let mut written = Vec::new();
            envelope.write(&mut written).unwrap();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&envelope).unwrap()
            );
        }
    }

    #[tokio::test]
    async fn absent_parts_are_null_and_no_warnings_is_null() {
        let mut data = Data::new();
        data.insert("k".into(), json!("v"));
        let answer = to_http("req-2", Operation::Read, Ok(Response::data(data)));
        let body = body_of(answer).await;
        for absent in ["wrap_info", "warnings", "auth"] {
            // Present, as `null` (Vault sends every part of the envelope).
            assert_eq!(body.get(absent), Some(&Value::Null), "{absent}");
        }
        assert_eq!(body["data"], json!({"k": "v"}));
        assert_eq!(body["lease_id"], "");
        assert_eq!(body["renewable"], false);
    }

    #[tokio::test]
    async fn an_answer_without_data_has_data_null() {
        let resp = Response {
            warnings: vec!["only this".into()],
            ..Response::default()
        };
        let body = body_of(to_http("req-4", Operation::Update, Ok(resp))).await;
        assert_eq!(body.get("data"), Some(&Value::Null));
        assert_eq!(body["warnings"], json!(["only this"]));
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "auth",
            "data",
            "lease_duration",
            "lease_id",
            "mount_type",
            "renewable",
            "request_id",
            "warnings",
            "wrap_info",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }

    #[tokio::test]
    async fn older_sys_answers_repeat_their_data_at_the_top_level() {
        let mut data = Data::new();
        data.insert("sealed".into(), json!(false));
        data.insert("request_id".into(), json!("not-this-one"));
        let resp = Response {
            data_at_top_level: true,
            ..Response::data(data)
        };
        let body = body_of(to_http("req-3", Operation::Read, Ok(resp))).await;
        assert_eq!(body["sealed"], false);
        assert_eq!(body["data"]["sealed"], false);
        assert_eq!(body["request_id"], "req-3");
    }
}
