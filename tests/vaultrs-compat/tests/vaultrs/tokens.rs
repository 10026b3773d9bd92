//! Policies and tokens: `vaultrs::sys::policy`, `vaultrs::token`.

use vaultrs::api::token::requests::CreateTokenRequest;
use vaultrs::error::ClientError;

use crate::harness::{expect_status, Server};

const POLICY: &str = "app-read";
const POLICY_HCL: &str = r#"
path "secret/data/app/*" {
  capabilities = ["read"]
}
"#;

#[tokio::test]
async fn policy_limits_a_new_token_to_its_paths() {
    let server = Server::dev().await;
    let root = server.root_client();
    vaultrs::kv2::set(
        &root,
        "secret",
        "app/config",
        &serde_json::json!({"level": "debug"}),
    )
    .await
    .expect("seed allowed path");
    vaultrs::kv2::set(
        &root,
        "secret",
        "other/config",
        &serde_json::json!({"x": "y"}),
    )
    .await
    .expect("seed other path");

    vaultrs::sys::policy::set(&root, POLICY, POLICY_HCL)
        .await
        .expect("sys::policy::set");
    let policy = vaultrs::sys::policy::read(&root, POLICY)
        .await
        .expect("sys::policy::read");
    assert_eq!(policy.name, POLICY);
    assert_eq!(policy.rules, POLICY_HCL);

    let mut opts = CreateTokenRequest::builder();
    opts.policies(vec![POLICY.to_owned()]).ttl("1h");
    let auth = vaultrs::token::new(&root, Some(&mut opts))
        .await
        .expect("token::new");
    assert!(!auth.client_token.is_empty());
    assert!(!auth.accessor.is_empty());
    assert_eq!(
        auth.policies,
        vec!["app-read".to_owned(), "default".to_owned()]
    );
    assert_eq!(
        auth.token_policies,
        vec!["app-read".to_owned(), "default".to_owned()]
    );
    assert_eq!(auth.lease_duration, 3600);
    assert!(auth.renewable);
    assert_eq!(auth.token_type, "service");
    assert!(!auth.orphan, "a child of the root token");

    let app = server.client(&auth.client_token);
    let config: serde_json::Value = vaultrs::kv2::read(&app, "secret", "app/config")
        .await
        .expect("read an allowed path");
    assert_eq!(config, serde_json::json!({"level": "debug"}));

    for denied in [
        vaultrs::kv2::read::<serde_json::Value>(&app, "secret", "other/config")
            .await
            .map(|_| ()),
        vaultrs::kv2::set(&app, "secret", "app/config", &serde_json::json!({"w": "x"}))
            .await
            .map(|_| ()),
    ] {
        match denied {
            Err(ClientError::APIError { code: 403, errors }) => {
                assert!(
                    errors.iter().any(|e| e.contains("permission denied")),
                    "{errors:?}"
                );
            }
            other => panic!("expected APIError 403 permission denied, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn lookup_renew_and_revoke_self() {
    let server = Server::dev().await;
    let root = server.root_client();

    let me = vaultrs::token::lookup_self(&root)
        .await
        .expect("lookup_self with root");
    assert_eq!(me.id, "root");
    assert_eq!(me.policies, vec!["root".to_owned()]);
    assert_eq!(me.ttl, 0, "the root token does not expire");
    assert_eq!(me.expire_time, None);

    vaultrs::sys::policy::set(&root, POLICY, POLICY_HCL)
        .await
        .expect("policy");
    let mut opts = CreateTokenRequest::builder();
    opts.policies(vec![POLICY.to_owned()])
        .ttl("1h")
        .display_name("ci");
    let auth = vaultrs::token::new(&root, Some(&mut opts))
        .await
        .expect("token::new");
    let app = server.client(&auth.client_token);

    let me = vaultrs::token::lookup_self(&app)
        .await
        .expect("lookup_self parses");
    assert_eq!(me.id, auth.client_token);
    assert_eq!(me.accessor, auth.accessor);
    assert_eq!(
        me.policies,
        vec!["app-read".to_owned(), "default".to_owned()]
    );
    assert_eq!(me.display_name, "token-ci");
    assert_eq!(me.path, "auth/token/create");
    assert_eq!(me.creation_ttl, 3600);
    assert!(me.ttl > 0 && me.ttl <= 3600, "ttl {}", me.ttl);
    assert_eq!(me.renewable, Some(true));
    assert!(!me.orphan);
    assert!(
        me.expire_time.is_some(),
        "a token with a TTL has an expire_time"
    );

    let renewed = vaultrs::token::renew_self(&app, Some("2h"))
        .await
        .expect("renew_self");
    assert_eq!(renewed.client_token, auth.client_token);
    assert_eq!(renewed.lease_duration, 7200, "renewed to the increment");
    let me = vaultrs::token::lookup_self(&app)
        .await
        .expect("lookup after renew");
    assert!(
        me.ttl > 3600 && me.ttl <= 7200,
        "ttl after renew: {}",
        me.ttl
    );

    vaultrs::token::revoke_self(&app)
        .await
        .expect("revoke_self");
    let err = expect_status(vaultrs::token::lookup_self(&app).await, 403);
    assert!(matches!(err, ClientError::APIError { .. }), "{err:?}");
    expect_status(
        vaultrs::kv2::read::<serde_json::Value>(&app, "secret", "app/x").await,
        403,
    );
    // The parent token is unaffected.
    vaultrs::token::lookup_self(&root)
        .await
        .expect("root still valid");
}
