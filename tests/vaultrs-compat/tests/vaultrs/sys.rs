//! `vaultrs::sys`: health, status and seal.

use std::time::{SystemTime, UNIX_EPOCH};

use vaultrs::api::sys::responses::ReadHealthResponse;
use vaultrs::sys::ServerStatus;

use crate::harness::{expect_status, health_document, Server};

#[tokio::test]
async fn health_parses_and_reports_an_initialized_unsealed_active_node() {
    let server = Server::dev().await;
    let client = server.root_client();

    let health: ReadHealthResponse = vaultrs::sys::health(&client)
        .await
        .expect("vaultrs must parse sys/health (all its required fields present)");
    assert!(health.initialized, "{health:?}");
    assert!(!health.sealed, "{health:?}");
    assert!(!health.standby, "{health:?}");
    assert!(!health.performance_standby, "{health:?}");
    assert_eq!(health.replication_dr_mode, "disabled", "{health:?}");
    assert_eq!(
        health.replication_performance_mode, "disabled",
        "{health:?}"
    );
    assert!(!health.version.is_empty(), "{health:?}");
    // server_time_utc is Unix seconds (not ms): within a day of this machine's clock.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    assert!(
        (health.server_time_utc - now).abs() < 86_400,
        "server_time_utc {} is not Unix seconds near {now}",
        health.server_time_utc
    );

    let status = vaultrs::sys::status(&client).await.expect("sys::status");
    assert!(
        matches!(status, ServerStatus::OK),
        "status of an active, unsealed node: {status:?}"
    );
}

#[tokio::test]
async fn seal_makes_status_sealed_and_refuses_requests() {
    let server = Server::dev().await;
    let client = server.root_client();

    vaultrs::kv2::set(
        &client,
        "secret",
        "before-seal",
        &serde_json::json!({"k": "v"}),
    )
    .await
    .expect("write before sealing");
    vaultrs::sys::seal(&client)
        .await
        .expect("sys::seal with the root token");

    let status = vaultrs::sys::status(&client)
        .await
        .expect("sys::status while sealed");
    assert!(
        matches!(status, ServerStatus::SEALED),
        "status after seal: {status:?}"
    );

    // health answers 503 with the health document (not an {"errors"} body), so vaultrs
    // reports the raw server response; the document still parses as vaultrs's type.
    let health = health_document(vaultrs::sys::health(&client).await, 503);
    assert!(health.sealed && health.initialized, "{health:?}");

    // Any logical request is refused with 503 while sealed.
    let read = vaultrs::kv2::read::<serde_json::Value>(&client, "secret", "before-seal").await;
    expect_status(read, 503);
}
