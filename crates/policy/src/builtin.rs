//! The HCL of the built-in policies.

/// The `default` policy attached to every non-root token (unless opted out): the token may
/// inspect, renew and revoke itself, ask for its own capabilities, see the mounts it can use,
/// use its cubbyhole, use response wrapping, and renew or look up its leases.
pub const DEFAULT_POLICY: &str = r#"# Look up, renew and revoke the calling token.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/revoke-self" {
  capabilities = ["update"]
}

# Ask which capabilities the calling token has on a path.
path "sys/capabilities-self" {
  capabilities = ["update"]
}

# List the mounts the token can reach (used by the UI and CLI).
path "sys/internal/ui/mounts" {
  capabilities = ["read"]
}

path "sys/internal/ui/mounts/*" {
  capabilities = ["read"]
}

# Renew and look up the token's leases.
path "sys/leases/renew" {
  capabilities = ["update"]
}

path "sys/leases/lookup" {
  capabilities = ["update"]
}

# The token's private cubbyhole.
path "cubbyhole/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

# Response wrapping.
path "sys/wrapping/wrap" {
  capabilities = ["update"]
}

path "sys/wrapping/lookup" {
  capabilities = ["update"]
}

path "sys/wrapping/unwrap" {
  capabilities = ["update"]
}

path "sys/wrapping/rewrap" {
  capabilities = ["update"]
}
"#;

/// The `response-wrapping` policy of wrapping tokens: read (and write, on creation) the
/// wrapped response in the cubbyhole, and use the wrapping endpoints.
pub const RESPONSE_WRAPPING_POLICY: &str = r#"path "cubbyhole/response" {
  capabilities = ["create", "read"]
}

path "sys/wrapping/*" {
  capabilities = ["update"]
}
"#;
