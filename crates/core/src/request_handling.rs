//! The request pipeline: sealed-state paths, authentication, routing, ACL, audit, token use
//! counting and response wrapping — in that order, as Vault's `HandleRequest`.

use std::sync::Arc;

use crate::core::Core;
use crate::logical::{BackendRequest, LogicalError, Operation, Request, Response, Result};
use crate::mounts::{Mounted, SystemTtls};
use crate::replication_hook::{DrMode, ReplicationHandler};

pub use bunker_sdk::{capability_for, Caller};

/// Reject paths that could escape a mount or confuse routing; strip leading slashes in place.
fn normalize_path(path: &mut String) -> Result<()> {
    let p = path.trim_start_matches('/');
    if p.len() > 4096 {
        return Err(LogicalError::InvalidRequest("path too long".into()));
    }
    if p.split('/').any(|seg| seg == ".." || seg == ".") || p.contains('\0') {
        return Err(LogicalError::InvalidRequest(format!(
            "invalid path {path:?}"
        )));
    }
    let slashes = path.len() - p.len();
    path.drain(..slashes);
    Ok(())
}

impl Core {
    /// Handle one client request end to end (timed as `vault_core_handle_request`).
    pub async fn handle(&self, req: Request) -> Result<Response> {
        let started = std::time::Instant::now();
        let login = Self::is_login_path(&req.path);
        // An HA node's request is boxed: the gate's future holds the request's a few times over,
        // and would make every request's future (moved a few times before it runs) that large.
        let result = match self.ha() {
            Some(ha) => Box::pin(self.handle_gated(ha, self.handle_timed(req))).await,
            None => self.handle_timed(req).await,
        };
        Self::record_request_time(login, started);
        result
    }

    /// Rare paths (help, replication, logins, standby answers, wrapping, revoking a used-up
    /// token) are awaited boxed: inline, their futures made every request's future larger, and
    /// it is copied whole a few times per request (`bunker-http`'s `a_request_future_stays_small`).
    async fn handle_timed(&self, mut req: Request) -> Result<Response> {
        normalize_path(&mut req.path)?;
        // Vault checks and routes every LIST on the folder form of the path.
        if req.operation == Operation::List && !req.path.ends_with('/') {
            req.path.push('/');
        }
        self.requests_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mode = self.dr_mode();
        // A DR secondary's seal is the primary's: it is neither initialised nor given a new
        // root token here (a wiped secondary before its first sync would otherwise accept an
        // init from anyone).
        let init_write = req.path == "sys/init" && req.operation != Operation::Read;
        if mode == DrMode::Secondary && (req.path.starts_with("sys/generate-root") || init_write) {
            return Err(LogicalError::DrSecondary);
        }
        if let Some(ha) = self.ha() {
            // A node of an HA cluster that is not active may have run since before another
            // node changed the DR mode in the shared storage: what is stored decides.
            if init_write
                && !self.is_active_node()
                && self.replication_handler().stored_dr_mode().await == DrMode::Secondary
            {
                return Err(LogicalError::DrSecondary);
            }
            // DR operations run only on the active node (a sealed standby of a DR secondary
            // would run them on its stale view of the replication state); status reads are
            // anyone's.
            let dr_status = self.replication_handler().answers_on_standby(&req.path);
            if req.path.starts_with("sys/replication/") && !dr_status && !self.is_active_node() {
                return Err(Box::pin(self.standby_error(ha)).await);
            }
            // A standby serves only its own status and the unseal endpoints.
            let local = crate::ha::standby_answers(&req.path) && req.path != "sys/seal";
            if !local && self.is_standby() {
                if req.path == "sys/seal" {
                    // As Vault: a standby is not sealed through the API (the request would be
                    // redirected and seal the active node).
                    return Err(LogicalError::Internal(
                        "vault cannot seal when in standby mode; please restart instead".into(),
                    ));
                }
                return Err(Box::pin(self.standby_error(ha)).await);
            }
        }
        if req.operation == Operation::Help {
            return Box::pin(self.handle_help(req, mode)).await;
        }
        if let Some(resp) = self.handle_unsealed_not_required(&req).await? {
            return Ok(resp);
        }
        if req.path.starts_with("sys/replication/") {
            let handler = self.replication_handler();
            return Box::pin(self.handle_replication(handler.as_ref(), &req)).await;
        } else if mode == DrMode::Secondary {
            return Err(LogicalError::DrSecondary);
        }
        if self.is_sealed() {
            return Err(LogicalError::Sealed);
        }
        // Wrapping lookups and self-unwraps authorise themselves; they are audited like the
        // rest (an unwrap hands out what was wrapped, activation bundles included).
        match self.handle_unauthenticated(&req).await {
            Ok(None) => {}
            result => {
                let answer = std::future::ready(result.map(|r| r.unwrap_or_default()));
                return Box::pin(self.audited_without_token(&req, answer)).await;
            }
        }
        // Routed once: the backend that says whether the path takes a token and whether it is
        // root-protected is the one that executes the request.
        let route = self.routed(&req.path);
        // An auth method's login paths (declared by the backend) take no token.
        if let Some(route) = route.as_ref().filter(|route| {
            let special = route.mounted.backend.special_paths();
            special.is_unauthenticated(route.rel(&req.path))
        }) {
            let answer = self.handle_login(&req, route);
            return Box::pin(self.audited_without_token(&req, answer)).await;
        }
        let mut caller = self.authenticate_audited(&mut req).await?;
        let mut logged = None;
        let result = self
            .handle_authenticated(&mut req, &mut caller, route, &mut logged)
            .await;
        self.audit
            .log_response(logged, &req, Some(&caller), &result)
            .await?;
        result
    }

    /// `sys/replication/*`: the replication handler decides who may call each endpoint, on the
    /// same locked state that executes it (the mode can change between here and there). The
    /// core only says who the caller is, when a token was presented and can be checked, and
    /// audits every request, authenticated or not.
    async fn handle_replication(
        &self,
        handler: &dyn ReplicationHandler,
        req: &Request,
    ) -> Result<Response> {
        let has_token = req.client_token.as_deref().is_some_and(|t| !t.is_empty());
        let caller = if has_token && !self.is_sealed() {
            self.authenticate(req).await.ok()
        } else {
            None
        };
        // As for a failed authentication, an anonymous caller gets no say in how much the audit
        // log holds: its request is audited without the body.
        let audited;
        let audited_req = if caller.is_none() && !req.data.is_empty() {
            audited = Request {
                id: req.id,
                operation: req.operation,
                path: req.path.clone(),
                data: Default::default(),
                client_token: req.client_token.clone(),
                wrap_ttl: req.wrap_ttl,
                remote_addr: req.remote_addr.clone(),
            };
            &audited
        } else {
            req
        };
        let logged = self.audit.log_request(audited_req, caller.as_ref()).await?;
        let result = handler.handle(self, req, caller.as_ref()).await;
        self.audit
            .log_response(Some(logged), audited_req, caller.as_ref(), &result)
            .await?;
        result
    }

    /// Like [`Core::authenticate`], but a failure is audited: a caller that failed
    /// authentication gets no say in how much the audit log holds, so its request is logged
    /// without the body.
    pub(crate) async fn authenticate_audited(&self, req: &mut Request) -> Result<Caller> {
        match self.authenticate(req).await {
            Ok(c) => Ok(c),
            Err(e) => {
                req.data = Default::default();
                let result: Result<Response> = Err(e);
                let logged = self.audit.log_request(req, None).await?;
                self.audit
                    .log_response(Some(logged), req, None, &result)
                    .await?;
                match result {
                    Err(e) => Err(e),
                    Ok(_) => Err(LogicalError::PermissionDenied),
                }
            }
        }
    }

    /// Resolve the client token to an entry and its ACL.
    pub(crate) async fn authenticate(&self, req: &Request) -> Result<Caller> {
        let token = req
            .client_token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or(LogicalError::PermissionDenied)?;
        let entry = self
            .tokens
            .lookup_shared(&token)
            .await?
            .ok_or(LogicalError::PermissionDenied)?;
        if !bunker_sdk::cidr::addr_allowed(req.remote_addr.as_deref(), &entry.bound_cidrs) {
            return Err(LogicalError::PermissionDenied);
        }
        let acl = self.policies.acl(&entry.policies).await?;
        Ok(Caller { token, entry, acl })
    }

    /// The mount serving `path` (a built-in one first, then the mount tables'), and the path
    /// relative to it.
    pub(crate) fn route<'p>(&self, path: &'p str) -> Option<(Mounted, &'p str)> {
        let builtin = self.builtin_mounts.iter().find_map(|m| {
            let rel = crate::mounts::relative_to(path, &m.entry.path)?;
            Some((m.clone(), rel))
        });
        builtin.or_else(|| {
            self.router
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .route(path)
                .map(|(m, rel)| (m.clone(), rel))
        })
    }

    /// [`Core::route`] as a [`Route`] into `path`.
    fn routed(&self, path: &str) -> Option<Route> {
        self.route(path).map(|(mounted, rel)| Route {
            rel_at: path.len() - rel.len(),
            path_len: path.len(),
            mounted,
        })
    }

    /// `route`, found before authentication, if the mount tables still route `path` to that
    /// mount, else `path` routed again: a mount unmounted or remounted meanwhile (remounting
    /// replaces the entry) is not executed on, and the window in which a request can reach a
    /// mount being removed stays the one from here to its dispatch.
    fn still_routed(&self, route: Option<Route>, path: &str) -> Option<Route> {
        let unchanged = route.as_ref().is_some_and(|route| {
            self.is_builtin(&route.mounted)
                || (self.router.read())
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .route(path)
                    .is_some_and(|(now, _)| Arc::ptr_eq(&now.entry, &route.mounted.entry))
        });
        if unchanged {
            route
        } else {
            self.routed(path)
        }
    }

    /// Audits a request that takes no token (a wrapping lookup, a self-unwrap, a login): the
    /// request's entry, then `answer`, then the response's. Its own function, awaited boxed:
    /// the answer and the audit entry held across the audit's awaits inline would be laid out
    /// beside the authenticated path's in every request's future (the compiler does not
    /// overlap locals of different branches that live across awaits: ~1.5 KiB of the 5.5).
    async fn audited_without_token(
        &self,
        req: &Request,
        answer: impl std::future::Future<Output = Result<Response>>,
    ) -> Result<Response> {
        let logged = self.audit.log_request(req, None).await?;
        let result = answer.await;
        self.audit
            .log_response(Some(logged), req, None, &result)
            .await?;
        result
    }

    /// A login: the backend checks the credentials, the core issues the token, and the answer
    /// is wrapped when the client asked.
    async fn handle_login(&self, req: &Request, route: &Route) -> Result<Response> {
        let mounted = &route.mounted;
        let breq = backend_request(req, mounted, route.rel(&req.path), "", self.lease_ttls());
        let resp = mounted.backend.handle(breq).await?;
        let resp = self.finish_login(resp, &mounted.entry, &req.path).await?;
        match req.wrap_ttl {
            Some(ttl) if resp.raw.is_none() && (resp.data.is_some() || resp.auth.is_some()) => {
                self.wrap_response(resp, ttl, &req.path).await
            }
            _ => Ok(resp),
        }
    }

    /// `logged` receives what the request's audit entry wrote, for its response entry.
    async fn handle_authenticated(
        &self,
        req: &mut Request,
        caller: &mut Caller,
        route: Option<Route>,
        logged: &mut Option<crate::audit::LoggedRequest>,
    ) -> Result<Response> {
        let namespace = caller.entry.cubbyhole_namespace();
        let route = self.resolve_route(req, namespace, route).await;
        // Audited whether it routes or not (no mount at the path, a failed existence check),
        // as Vault audits a request whose checks fail.
        *logged = Some(self.audit.log_request(req, Some(caller)).await?);
        let route = route?;
        // (A wrapping token presented to unwrap itself never gets here: it is its own
        // authorisation, answered before authentication in `lifecycle.rs`.)
        if !acl_allows(
            caller,
            req.operation,
            &req.path,
            route.needs_sudo(&req.path),
        ) {
            return Err(LogicalError::PermissionDenied);
        }
        let last_use = self.tokens.use_token(&mut caller.entry).await?;
        let result = self.dispatch(req, caller, route).await;
        if last_use {
            Box::pin(self.revoke_token_tree(&caller.entry.id_hash)).await?;
        }
        let mut resp = result?;
        if let Some(ttl) = req.wrap_ttl {
            if resp.raw.is_none() && (resp.data.is_some() || resp.auth.is_some()) {
                resp = Box::pin(self.wrap_response(resp, ttl, &req.path)).await?;
            }
        }
        Ok(resp)
    }

    /// Where the request goes (`route`, found before authentication); for writes to mounts,
    /// settle create vs update.
    async fn resolve_route(
        &self,
        req: &mut Request,
        namespace: &str,
        route: Option<Route>,
    ) -> Result<Route> {
        let Some(route) = self.still_routed(route, &req.path) else {
            return Err(LogicalError::UnsupportedPath(req.path.clone()));
        };
        if matches!(req.operation, Operation::Create | Operation::Update) {
            let rel = route.rel(&req.path);
            let breq = backend_request(req, &route.mounted, rel, namespace, self.lease_ttls());
            // The existence check runs before the ACL check: it gets no caller.
            let exists = route.mounted.backend.exists(&breq).await?;
            req.operation = match exists {
                Some(false) => Operation::Create,
                _ => Operation::Update,
            };
        }
        Ok(route)
    }

    async fn dispatch(&self, req: &Request, caller: &Caller, route: Route) -> Result<Response> {
        let mounted = &route.mounted;
        let namespace = caller.entry.cubbyhole_namespace();
        let rel = route.rel(&req.path);
        let mut breq = backend_request(req, mounted, rel, namespace, self.lease_ttls());
        // As Vault's router: only the built-in backends see the caller's token; the others
        // get a per-token namespace (`token_namespace`), never the token.
        if self.is_builtin(mounted) {
            breq.caller = Some(caller);
        }
        let resp = mounted.backend.handle(breq).await?;
        if resp.login.is_some() {
            return Err(LogicalError::Internal(
                "a login answer from a path that needs a token".into(),
            ));
        }
        Ok(resp)
    }
}

/// What the backend of `mounted` sees of `req`, at `rel` relative to the mount.
fn backend_request<'a>(
    req: &'a Request,
    mounted: &'a Mounted,
    rel: &'a str,
    namespace: &'a str,
    system_ttls: &SystemTtls,
) -> BackendRequest<'a> {
    BackendRequest {
        operation: req.operation,
        path: rel,
        data: &req.data,
        storage: &mounted.view,
        mount_point: &mounted.entry.path,
        token_namespace: namespace,
        mount_options: &mounted.entry.options,
        default_lease_ttl_secs: mounted.entry.default_lease_ttl_secs(system_ttls),
        remote_addr: req.remote_addr.as_deref(),
        caller: None,
        wrap_ttl: req.wrap_ttl,
    }
}

/// The mount a request goes to, and where in the request's path (normalised, and not changed
/// after routing) the path relative to the mount starts: an offset, not a copy, so that routing
/// allocates nothing and the request stays free to change its operation.
struct Route {
    mounted: Mounted,
    rel_at: usize,
    /// The length of the path routed, to catch a change of the path after routing in tests.
    path_len: usize,
}

impl Route {
    /// The path relative to the mount, in `path` (the request's, as routed).
    fn rel<'p>(&self, path: &'p str) -> &'p str {
        debug_assert_eq!(
            path.len(),
            self.path_len,
            "the request's path changed after routing"
        );
        &path[self.rel_at..]
    }

    /// Whether the request's path is root-protected, as the backend it routes to declares.
    fn needs_sudo(&self, path: &str) -> bool {
        self.mounted.backend.special_paths().is_root(self.rel(path))
    }
}

/// Whether the caller's ACL allows `op` on `path`, with `sudo` too when the path is
/// root-protected. A LIST (on the folder form of the path, `.../`) is also allowed by a rule on
/// the path without its trailing slash; `sudo` must come from a rule that allows the request, as
/// in Vault, where it comes from the one rule governing the path: `path "auth/token/accessors"
/// { capabilities = ["list", "sudo"] }` allows the LIST of `auth/token/accessors/`.
fn acl_allows(caller: &Caller, op: Operation, path: &str, needs_sudo: bool) -> bool {
    let cap = capability_for(op);
    let folder = path.trim_end_matches('/');
    let mut governing = std::iter::once(path).chain((op == Operation::List).then_some(folder));
    governing.any(|p| caller.has(p, cap) && (!needs_sudo || caller.is_sudo(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(policy: &str) -> Caller {
        let policy = bunker_policy::Policy::parse("p", policy).unwrap();
        Caller {
            token: String::new(),
            entry: std::sync::Arc::default(),
            acl: bunker_policy::Acl::new(&[policy]),
        }
    }

    /// A request is routed before authentication; if its mount is unmounted or remounted
    /// (a new entry at the same path) before it is dispatched, it is routed again.
    #[test]
    fn a_route_changed_after_routing_is_routed_again() {
        use crate::mounts::tests::mount_of_nothing;
        let core = Core::new(
            Arc::new(bunker_storage::InmemBackend::new()),
            Default::default(),
        );
        let mount = |path: &str| {
            let mounted = mount_of_nothing(&core.barrier, path);
            core.router.write().unwrap().insert(mounted.clone());
            mounted
        };
        let unmount = |path: &str| core.router.write().unwrap().remove(path);
        let path = "t/a/b";
        // What a request routed to `mounted` before authentication holds.
        let held = |mounted: &Mounted| {
            Some(Route {
                mounted: mounted.clone(),
                rel_at: "t/".len(),
                path_len: path.len(),
            })
        };
        let serves = |route: &Option<Route>, mounted: &Mounted| {
            (route.as_ref()).is_some_and(|r| Arc::ptr_eq(&r.mounted.entry, &mounted.entry))
        };

        let first = mount("t/");
        let routed = core.routed(path);
        assert!(serves(&routed, &first));
        assert_eq!(routed.as_ref().map(|r| r.rel(path)), Some("a/b"));
        assert!(serves(&core.still_routed(routed, path), &first));

        // Remounted: a new entry at the same path.
        unmount("t/");
        let second = mount("t/");
        assert!(serves(&core.still_routed(held(&first), path), &second));
        assert!(serves(&core.still_routed(held(&second), path), &second));

        // A longer mount added under it now serves the path.
        let nested = mount("t/a/");
        let moved = core.still_routed(held(&second), path);
        assert!(serves(&moved, &nested));
        assert_eq!(moved.as_ref().map(|r| r.rel(path)), Some("b"));

        // Unmounted: no route any more.
        unmount("t/a/");
        unmount("t/");
        assert!(core.still_routed(held(&second), path).is_none());

        // A built-in mount is kept as routed (its entry never changes).
        let sys = core.routed("sys/health");
        assert!(sys.is_some());
        assert!(core.still_routed(sys, "sys/health").is_some());
    }

    #[test]
    fn a_list_takes_sudo_from_a_rule_that_allows_it() {
        let list = Operation::List;
        let accessors = "auth/token/accessors/";
        let both = caller(r#"path "auth/token/accessors" { capabilities = ["list", "sudo"] }"#);
        assert!(acl_allows(&both, list, accessors, true));
        let folder = caller(r#"path "auth/token/accessors/" { capabilities = ["list", "sudo"] }"#);
        assert!(acl_allows(&folder, list, accessors, true));
        let no_sudo = caller(r#"path "auth/token/accessors" { capabilities = ["list"] }"#);
        assert!(acl_allows(&no_sudo, list, accessors, false));
        assert!(!acl_allows(&no_sudo, list, accessors, true));
        // Sudo on one form and the capability on the other is not a rule that allows it.
        let split = caller(
            r#"path "auth/token/accessors" { capabilities = ["list"] }
               path "auth/token/accessors/" { capabilities = ["sudo"] }"#,
        );
        assert!(!acl_allows(&split, list, accessors, true));
        // Only a LIST looks at the path without its trailing slash.
        let read = caller(r#"path "sys/x" { capabilities = ["read", "sudo"] }"#);
        assert!(acl_allows(&read, Operation::Read, "sys/x", true));
        assert!(!acl_allows(&read, Operation::Read, "sys/x/", false));
    }

    #[test]
    fn path_normalization() {
        let normalized = |path: &str| {
            let mut path = path.to_owned();
            normalize_path(&mut path).map(|()| path)
        };
        assert_eq!(
            normalized("/secret/data/a").ok().as_deref(),
            Some("secret/data/a")
        );
        assert_eq!(normalized("//secret/").ok().as_deref(), Some("secret/"));
        assert_eq!(normalized("sys/health").ok().as_deref(), Some("sys/health"));
        assert!(normalized("secret/../sys").is_err());
        assert!(normalized("secret/./x").is_err());
        assert!(normalized("/secret/\0").is_err());
    }
}
