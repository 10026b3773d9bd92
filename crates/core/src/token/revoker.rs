//! Revoking tokens with what dies with them: a revoked token's cubbyhole. The cubbyhole mount
//! is found in the live router, which the core and the token backend share, so the token
//! backend revokes exactly as the core does without holding the core.

use std::sync::{Arc, RwLock};

use super::TokenStore;
use crate::logical::{Result, StorageView};
use crate::mounts::Router;

#[derive(Clone)]
pub(crate) struct Revoker {
    tokens: Arc<TokenStore>,
    router: Arc<RwLock<Router>>,
}

impl Revoker {
    pub(crate) fn new(tokens: Arc<TokenStore>, router: Arc<RwLock<Router>>) -> Self {
        Revoker { tokens, router }
    }

    /// The storage of the cubbyhole mount, when one is mounted (not while sealed).
    pub(crate) fn cubbyhole_view(&self) -> Option<StorageView> {
        self.router
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first_of_kind("cubbyhole")
            .map(|m| m.view.clone())
    }

    /// Revoke a token and every descendant, and their cubbyholes.
    pub(crate) async fn revoke_tree(&self, hash: &str) -> Result<()> {
        let revoked = self.tokens.revoke_tree(hash).await?;
        self.destroy_cubbyholes(&revoked).await
    }

    /// Revoke only this token (its children become orphans), and its cubbyhole.
    pub(crate) async fn revoke_orphan(&self, hash: &str) -> Result<()> {
        let revoked = self.tokens.revoke_orphan(hash).await?;
        self.destroy_cubbyholes(&revoked).await
    }

    /// Revoke every token logged in through the auth method mounted at `path` (`auth/x/`).
    pub(crate) async fn revoke_by_path_prefix(&self, path: &str) -> Result<()> {
        let revoked = self.tokens.revoke_by_path_prefix(path).await?;
        self.destroy_cubbyholes(&revoked).await
    }

    /// Revoke every expired token; returns how many were revoked.
    pub(crate) async fn tidy(&self) -> Result<usize> {
        let revoked = self.tokens.tidy().await?;
        self.destroy_cubbyholes(&revoked).await?;
        Ok(revoked.len())
    }

    async fn destroy_cubbyholes(&self, hashes: &[String]) -> Result<()> {
        if let Some(view) = self.cubbyhole_view() {
            for h in hashes {
                view.delete_prefix(&format!("{h}/")).await?;
            }
        }
        Ok(())
    }
}
