//! `?help=1` on any path: Vault's `{"help": ..., "openapi": ..., "see_also": ...}` answer,
//! from the help the backend serving the path declares (the built-in `sys/` and `auth/token/`
//! declare theirs like any backend). As in Vault, help needs a valid token and no capability
//! on the path, and is audited like any request.

use bunker_sdk::{BackendHelp, PathHelp};
use serde_json::{json, Map, Value};

use crate::core::Core;
use crate::logical::{LogicalError, Request, Response, Result};
use crate::replication_hook::DrMode;

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
        let logged = self.audit.log_request(&req, Some(&caller)).await?;
        let result = self.help_for(&req.path);
        self.audit
            .log_response(Some(logged), &req, Some(&caller), &result)
            .await?;
        result
    }

    fn help_for(&self, path: &str) -> Result<Response> {
        let (mounted, rel) = self
            .route(path)
            .ok_or_else(|| LogicalError::UnsupportedPath(path.to_owned()))?;
        let (mount, help) = (mounted.entry.path.clone(), mounted.backend.help());
        let matched = help.path_for(rel);
        Ok(Response::raw(
            200,
            json!({
                "help": help_text(&help, rel, matched),
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
        for help in [crate::sys::HELP, crate::token::HELP] {
            assert!(!help.description.is_empty());
            assert!(help.paths.iter().all(|p| !p.synopsis.is_empty()));
        }
        assert_eq!(
            crate::sys::HELP
                .path_for("remount/status/abc")
                .map(|p| p.pattern),
            Some("remount/status/:migration_id")
        );
        assert_eq!(
            crate::sys::HELP
                .path_for("mounts/secret/tune")
                .map(|p| p.pattern),
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
        assert_eq!(crate::mounts::relative_to("sys", "sys/"), Some(""));
        assert_eq!(crate::mounts::relative_to("sysx/a", "sys/"), None);
    }
}
