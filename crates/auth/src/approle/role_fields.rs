//! AppRole's per-field role endpoints (`role/<name>/policies`, `role/<name>/secret-id-ttl`,
//! ...), as Vault has them for tools that manage one setting at a time: GET reads the field,
//! POST sets it, DELETE puts it back to its default. They go through the same role update as
//! `role/<name>`, so the same checks apply.

use bunker_sdk::{BackendRequest, Data, LogicalError, Operation, Response, Result};
use serde_json::{json, Value};

use super::{role_or_error, Role, ROLE_PREFIX};

/// One endpoint: its path segment, the role fields it shows (the first is the one it sets; the
/// others are older names Vault also accepts and shows), and the field's default.
struct FieldEndpoint {
    segment: &'static str,
    fields: &'static [&'static str],
    default: fn() -> Value,
}

const ENDPOINTS: &[FieldEndpoint] = &[
    FieldEndpoint {
        segment: "policies",
        fields: &["token_policies", "policies"],
        default: || json!([]),
    },
    FieldEndpoint {
        segment: "secret-id-num-uses",
        fields: &["secret_id_num_uses"],
        default: || json!(0),
    },
    FieldEndpoint {
        segment: "secret-id-ttl",
        fields: &["secret_id_ttl"],
        default: || json!(0),
    },
    FieldEndpoint {
        segment: "token-num-uses",
        fields: &["token_num_uses"],
        default: || json!(0),
    },
    FieldEndpoint {
        segment: "token-ttl",
        fields: &["token_ttl"],
        default: || json!(0),
    },
    FieldEndpoint {
        segment: "token-max-ttl",
        fields: &["token_max_ttl"],
        default: || json!(0),
    },
    FieldEndpoint {
        segment: "period",
        fields: &["token_period", "period"],
        default: || json!(0),
    },
    FieldEndpoint {
        segment: "bind-secret-id",
        fields: &["bind_secret_id"],
        default: || json!(true),
    },
    FieldEndpoint {
        segment: "secret-id-bound-cidrs",
        fields: &["secret_id_bound_cidrs"],
        default: || json!([]),
    },
    FieldEndpoint {
        segment: "bound-cidr-list",
        fields: &["secret_id_bound_cidrs"],
        default: || json!([]),
    },
    FieldEndpoint {
        segment: "token-bound-cidrs",
        fields: &["token_bound_cidrs"],
        default: || json!([]),
    },
];

/// Whether `role/<name>/<segment>` is a per-field endpoint.
pub(super) fn is_field_endpoint(segment: &str) -> bool {
    ENDPOINTS.iter().any(|e| e.segment == segment)
}

/// `role/<name>/<segment>` for a per-field endpoint.
pub(super) async fn handle(
    req: &BackendRequest<'_>,
    name: &str,
    segment: &str,
) -> Result<Response> {
    let endpoint = ENDPOINTS
        .iter()
        .find(|e| e.segment == segment)
        .ok_or_else(|| LogicalError::UnsupportedPath(segment.to_owned()))?;
    let mut role = role_or_error(req.storage, name).await?;
    let update = match req.operation {
        Operation::Read => return Ok(Response::data(shown(&role, endpoint))),
        Operation::Create | Operation::Update => {
            let given: Data = endpoint
                .fields
                .iter()
                .filter_map(|f| req.data.get(*f).map(|v| ((*f).to_owned(), v.clone())))
                .collect();
            if given.is_empty() {
                return Err(LogicalError::InvalidRequest(format!(
                    "missing {}",
                    endpoint.fields.first().copied().unwrap_or(segment)
                )));
            }
            given
        }
        Operation::Delete => endpoint
            .fields
            .iter()
            .take(1)
            .map(|f| ((*f).to_owned(), (endpoint.default)()))
            .collect(),
        _ => return Err(LogicalError::UnsupportedOperation),
    };
    role.update_from(&update)?;
    req.storage
        .put_json(&format!("{ROLE_PREFIX}{name}"), &role)
        .await?;
    Ok(Response::empty())
}

/// The endpoint's fields as the role reads them (older names show the same value).
fn shown(role: &Role, endpoint: &FieldEndpoint) -> Data {
    let all = role.to_data();
    let value = endpoint
        .fields
        .first()
        .and_then(|f| all.get(*f))
        .cloned()
        .unwrap_or(Value::Null);
    endpoint
        .fields
        .iter()
        .map(|f| ((*f).to_owned(), value.clone()))
        .collect()
}
