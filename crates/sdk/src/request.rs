use std::time::Duration;

use super::{Data, LogicalError};

/// The operations that write a path: create and update.
pub const WRITE: &[Operation] = &[Operation::Create, Operation::Update];

/// `UnsupportedOperation` unless `op` is one of `allowed` (Vault's 405).
pub fn expect_op(op: Operation, allowed: &[Operation]) -> Result<(), LogicalError> {
    if allowed.contains(&op) {
        Ok(())
    } else {
        Err(LogicalError::UnsupportedOperation)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read,
    Create,
    Update,
    Delete,
    List,
    Patch,
    /// `?help=1`: what the path does. The core answers it; backends never receive it.
    Help,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::List => "list",
            Operation::Patch => "patch",
            Operation::Help => "help",
        }
    }
}

/// A client request as the core sees it (the HTTP layer builds it). Its `Debug` shows neither
/// the token nor the data, so a stray `{:?}` cannot log a secret.
#[derive(Clone)]
pub struct Request {
    pub id: RequestId,
    pub operation: Operation,
    /// Full path after `/v1/`, without a leading slash, e.g. `secret/data/foo`.
    pub path: String,
    pub data: Data,
    pub client_token: Option<String>,
    /// `X-Vault-Wrap-TTL`: wrap the response in a single-use token with this TTL.
    pub wrap_ttl: Option<Duration>,
    pub remote_addr: Option<String>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("operation", &self.operation)
            .field("path", &self.path)
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .field("has_token", &self.client_token.is_some())
            .field("wrap_ttl", &self.wrap_ttl)
            .finish()
    }
}

/// A request's id: a version-4 UUID drawn from the thread's CSPRNG (`rand::thread_rng`,
/// seeded from the OS), not one `getrandom` system call per request as `Uuid::new_v4` makes
/// (about 1 % of a write's CPU). Ids are unique, not secret. Kept as its text, inline and
/// `Copy`: the HTTP layer keeps the id for the response envelope while the core takes the
/// request, and a `String` cost two allocations per request (the text, the copy).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; uuid::fmt::Hyphenated::LENGTH]);

impl RequestId {
    fn random() -> RequestId {
        let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
        uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .hyphenated()
            .encode_lower(&mut text);
        RequestId(text)
    }

    pub fn as_str(&self) -> &str {
        // Only ever the ASCII text `encode_lower` wrote.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Request {
    pub fn new(operation: Operation, path: impl Into<String>) -> Self {
        Request {
            id: RequestId::random(),
            operation,
            path: path.into(),
            data: Data::new(),
            client_token: None,
            wrap_ttl: None,
            remote_addr: None,
        }
    }

    pub fn with_data(mut self, data: Data) -> Self {
        self.data = data;
        self
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.client_token = Some(token.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_version_4_uuids() {
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| Request::new(Operation::Read, "x").id.to_string())
            .collect();
        assert_eq!(ids.len(), 1000);
        for id in ids.iter().take(20) {
            let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(uuid.get_version_num(), 4, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
    }
}
