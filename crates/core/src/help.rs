//! `?help=1` on any path: Vault's `{"help": ..., "openapi": ..., "see_also": ...}` answer,
//! from the help the backend serving the path declares (`sys/` and `auth/token/` are the
//! core's own, below). As in Vault, help needs a valid token and no capability on the path, and
//! is audited like any request.

use bunker_sdk::{BackendHelp, PathHelp};
use serde_json::{json, Map, Value};

use crate::core::Core;
use crate::logical::{LogicalError, Request, Response, Result};
use crate::replication_hook::DrMode;

const fn path(pattern: &'static str, synopsis: &'static str) -> PathHelp {
    PathHelp { pattern, synopsis }
}

/// The system backend.
const SYS: BackendHelp = BackendHelp {
    description: "The system backend is built in at sys/: it controls the server (seal, \
        unseal, init, key rotation, rekey, generate-root), its mount tables (secrets engines and \
        auth methods), ACL policies, response wrapping, audit devices and DR replication.",
    paths: &[
        path("init", "Initialise the server (PUT secret_shares, secret_threshold) or read whether it is."),
        path("seal-status", "The seal status: sealed, threshold, shares, unseal progress."),
        path("unseal", "Submit one unseal key share (PUT key), or reset the progress (reset=true)."),
        path("seal", "Seal the server (needs sudo)."),
        path("health", "Health of the server, with Vault's status codes."),
        path("leader", "The active node's address."),
        path("rotate", "Add a new key term to the keyring (needs sudo)."),
        path("key-status", "The keyring's current term and when it was installed."),
        path("rekey/*", "New unseal key shares: init, update with the current shares, verify."),
        path("generate-root/*", "Generate a root token from a quorum of unseal key shares."),
        path("mounts", "List the secrets engines."),
        path("mounts/*", "Enable (POST type, config, options), read or disable (DELETE) the secrets engine at a path; <path>/tune reads or sets its TTLs and description."),
        path("auth", "List the auth methods."),
        path("auth/*", "Enable (POST type, config), read or disable (DELETE) the auth method at a path (needs sudo); <path>/tune reads or sets its TTLs."),
        path("remount", "Move a secrets engine or auth method to a new path with its data (POST from, to; needs sudo)."),
        path("remount/status/:migration_id", "The status of a mount move."),
        path("policy", "List the ACL policies."),
        path("policy/*", "Read, write (PUT rules) or delete an ACL policy."),
        path("policies/acl", "List the ACL policies."),
        path("policies/acl/*", "Read, write (PUT policy) or delete an ACL policy."),
        path("capabilities", "The capabilities of a token on paths (POST token, paths)."),
        path("capabilities-self", "The capabilities of the caller's token on paths (POST paths)."),
        path("capabilities-accessor", "The capabilities of the token of an accessor on paths."),
        path("wrapping/*", "Response wrapping: wrap, unwrap, lookup and rewrap."),
        path("audit", "List the audit devices (needs sudo)."),
        path("audit/*", "Enable (PUT type, options) or disable an audit device (needs sudo)."),
        path("audit-hash/*", "The HMAC an audit device would log for an input."),
        path("replication/*", "DR replication: status, primary and secondary operations."),
        path("metrics", "Server metrics, in Prometheus or Vault's JSON format."),
        path("internal/ui/mounts/*", "The mount serving a path, for clients (kv version discovery)."),
        path("decode-token", "Decode an OTP-encoded root token."),
    ],
};

/// The `help` text: the matching path's synopsis, or the backend's description and paths.
fn help_text(help: &BackendHelp, rel: &str, matched: Option<&PathHelp>) -> String {
    let description = if help.description.is_empty() {
        "This backend has no help text."
    } else {
        help.description
    };
    match matched {
        Some(p) => format!(
            "Request:        {rel}\nMatching Route: {}\n\n{}\n\n## DESCRIPTION\n\n{description}",
            p.pattern, p.synopsis
        ),
        None => {
            let mut text = format!(
                "## DESCRIPTION\n\n{description}\n\n## PATHS\n\nThe following paths are \
                 supported by this backend. To view help for any of them, ask for help on a \
                 path matching its pattern.\n"
            );
            for p in help.paths {
                text.push_str(&format!("\n    {}\n        {}\n", p.pattern, p.synopsis));
            }
            text
        }
    }
}

/// The `openapi` document: the matching path, or every path of the backend.
fn openapi(mount: &str, help: &BackendHelp, matched: Option<&PathHelp>) -> Value {
    let shown: Vec<&PathHelp> = match matched {
        Some(p) => vec![p],
        None => help.paths.iter().collect(),
    };
    let paths: Map<String, Value> = shown
        .into_iter()
        .map(|p| {
            (
                format!("/{mount}{}", p.openapi_template()),
                json!({"description": p.synopsis}),
            )
        })
        .collect();
    json!({
        "openapi": "3.0.2",
        "info": {
            "title": "Bunker API",
            "description": "Bunker's HTTP API, which is HashiCorp Vault's. All API routes are prefixed with `/v1/`.",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "paths": paths,
        "components": {"schemas": {}},
    })
}

impl Core {
    /// A help request: refused where any request is (a DR secondary, a sealed server), then
    /// authenticated and audited, and answered from the backend's help.
    pub(crate) async fn handle_help(&self, mut req: Request, mode: DrMode) -> Result<Response> {
        if mode == DrMode::Secondary {
            return Err(LogicalError::DrSecondary);
        }
        if self.is_sealed() {
            return Err(LogicalError::Sealed);
        }
        let caller = self.authenticate_audited(&mut req).await?;
        self.audit.log_request(&req, Some(&caller)).await?;
        let result = self.help_for(&req.path);
        self.audit
            .log_response(&req, Some(&caller), &result)
            .await?;
        result
    }

    fn help_for(&self, path: &str) -> Result<Response> {
        let (mount, rel, help) = if let Some(rel) = crate::mounts::relative_to(path, "sys/") {
            ("sys/".to_owned(), rel, SYS)
        } else {
            let (mounted, rel) = self
                .route(path)
                .ok_or_else(|| LogicalError::UnsupportedPath(path.to_owned()))?;
            (mounted.entry.path.clone(), rel, mounted.backend.help())
        };
        let matched = help.path_for(&rel);
        Ok(Response::raw(
            200,
            json!({
                "help": help_text(&help, &rel, matched),
                "openapi": openapi(&mount, &help, matched),
                "see_also": null,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_path_has_a_synopsis_and_paths_match() {
        for help in [SYS, crate::token::HELP] {
            assert!(!help.description.is_empty());
            assert!(help.paths.iter().all(|p| !p.synopsis.is_empty()));
        }
        assert_eq!(
            SYS.path_for("remount/status/abc").map(|p| p.pattern),
            Some("remount/status/:migration_id")
        );
        assert_eq!(
            SYS.path_for("mounts/secret/tune").map(|p| p.pattern),
            Some("mounts/*")
        );
        let text = help_text(&crate::token::HELP, "", None);
        assert!(text.contains("## PATHS") && text.contains("lookup-self"));
        let doc = openapi(
            "auth/token/",
            &crate::token::HELP,
            crate::token::HELP.path_for("roles/x"),
        );
        assert_eq!(
            doc["paths"]["/auth/token/roles/{role_name}"]["description"],
            "Create, read or delete a token role."
        );
        assert_eq!(
            crate::mounts::relative_to("sys", "sys/").as_deref(),
            Some("")
        );
        assert_eq!(crate::mounts::relative_to("sysx/a", "sys/"), None);
    }
}
