use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Data;

/// Authentication result attached to a response (token create, login).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Auth {
    pub client_token: String,
    pub accessor: String,
    pub policies: Vec<String>,
    pub token_policies: Vec<String>,
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
    pub lease_duration: u64,
    pub renewable: bool,
    pub entity_id: String,
    pub token_type: String,
    pub orphan: bool,
    pub mfa_requirement: Option<Value>,
    pub num_uses: u64,
}

/// Response-wrapping information (`wrap_info` in the envelope).
#[derive(Clone, Debug, Serialize)]
pub struct WrapInfo {
    pub token: String,
    pub accessor: String,
    pub ttl: u64,
    pub creation_time: String,
    pub creation_path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub wrapped_accessor: String,
}

/// A response whose status code and body the backend sets itself (sys/health and the like).
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    pub body: Value,
    /// When set, `body` is a JSON string sent verbatim with this content type.
    pub content_type: Option<&'static str>,
}

/// What a backend answers. The parts most responses lack (`auth`, `wrap_info`, `raw`,
/// `login`) are boxed: a response is returned and polled through every layer of a request's
/// futures, and each layer copies it; unboxed they made it 680 bytes, boxed it is 128.
#[derive(Clone, Debug, Default)]
pub struct Response {
    pub data: Option<Data>,
    pub auth: Option<Box<Auth>>,
    pub warnings: Vec<String>,
    pub wrap_info: Option<Box<WrapInfo>>,
    pub lease_duration: u64,
    pub lease_id: String,
    pub renewable: bool,
    pub raw: Option<Box<RawResponse>>,
    /// Also copy `data`'s fields to the top level of the envelope (older sys endpoints do this).
    pub data_at_top_level: bool,
    /// Set by an auth method's login: the core creates the token and fills `auth`.
    pub login: Option<Box<super::LoginAuth>>,
}

impl Response {
    /// No body: the HTTP layer answers 204.
    pub fn empty() -> Self {
        Response::default()
    }

    pub fn data(data: Data) -> Self {
        Response {
            data: Some(data),
            ..Default::default()
        }
    }

    /// Build from any serializable object (must serialize to a JSON object).
    pub fn from_serialize<T: Serialize>(value: &T) -> super::Result<Self> {
        match serde_json::to_value(value)? {
            Value::Object(map) => Ok(Response::data(map)),
            _ => Err(super::LogicalError::Internal(
                "response data is not an object".into(),
            )),
        }
    }

    pub fn raw(status: u16, body: Value) -> Self {
        Response {
            raw: Some(Box::new(RawResponse {
                status,
                body,
                content_type: None,
            })),
            ..Default::default()
        }
    }

    pub fn list(keys: Vec<String>) -> Self {
        let mut data = Data::new();
        data.insert(
            "keys".into(),
            Value::Array(keys.into_iter().map(Value::String).collect()),
        );
        Response::data(data)
    }

    pub fn with_warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_none()
            && self.auth.is_none()
            && self.warnings.is_empty()
            && self.wrap_info.is_none()
            && self.raw.is_none()
            && self.login.is_none()
    }
}
