use thiserror::Error;

/// Errors from reading a policy document. Both are caused by the client's policy text.
///
/// Each variant carries the complete message, naming the policy and the offending path, e.g.
/// `invalid policy "ops": path "secret/*": unknown capability "reed" (expected one of: ...)`.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The text is not valid HCL (or JSON); carries the parser's message.
    #[error("{0}")]
    Parse(String),
    /// The text parses but is not a valid policy: unknown key, capability or legacy policy
    /// value, or a malformed path pattern.
    #[error("{0}")]
    Invalid(String),
}
