//! vaultrs's view of a DR replication secondary: `sys/health` answers 472, which
//! `vaultrs::sys::status` maps to `ServerStatus::RECOVERY`.
//!
//! vaultrs has no replication calls, so the setup uses raw HTTP.

use std::time::Duration;

use serde_json::json;
use vaultrs::api::sys::requests::ReadHealthRequest;
use vaultrs::sys::ServerStatus;

use crate::harness::{health_document, poll_until, Server};

const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn health_on_a_dr_secondary_is_472_and_status_is_recovery() {
    let primary = Server::initialized().await;
    let secondary = Server::initialized().await;

    let (code, body) = primary
        .raw(
            "POST",
            "sys/replication/dr/primary/enable",
            Some(&primary.root_token),
            Some(json!({})),
        )
        .await;
    assert!(
        code == 200 || code == 204,
        "dr primary enable: {code} {body}"
    );
    let (code, body) = primary
        .raw(
            "POST",
            "sys/replication/dr/primary/secondary-token",
            Some(&primary.root_token),
            Some(json!({"id": "b"})),
        )
        .await;
    assert_eq!(code, 200, "secondary-token: {body}");
    let activation = body["wrap_info"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("wrap_info.token in {body}"))
        .to_owned();
    let (code, body) = secondary
        .raw(
            "POST",
            "sys/replication/dr/secondary/enable",
            Some(&secondary.root_token),
            Some(json!({ "token": activation })),
        )
        .await;
    assert!(
        code == 200 || code == 204,
        "dr secondary enable: {code} {body}"
    );

    // The primary stays an ordinary active node for vaultrs, now reporting its DR mode.
    let primary_client = primary.root_client();
    let health = vaultrs::sys::health(&primary_client)
        .await
        .expect("primary health");
    assert_eq!(health.replication_dr_mode, "primary", "{health:?}");
    assert!(matches!(
        vaultrs::sys::status(&primary_client)
            .await
            .expect("primary status"),
        ServerStatus::OK
    ));

    // The wrapped activation token carries no key: once bootstrapped the secondary holds the
    // primary's data and seal, and is opened with the primary's unseal key.
    poll_until(CONVERGE, "secondary bootstrapped", || async {
        let (code, body) = secondary
            .raw("GET", "sys/replication/dr/status", None, None)
            .await;
        match body["data"]["state"].as_str() {
            Some("stream-wals") if code == 200 => Ok(()),
            _ => Err(format!("{code} {body}")),
        }
    })
    .await;
    let (code, body) = secondary
        .raw(
            "PUT",
            "sys/unseal",
            None,
            Some(json!({ "key": primary.unseal_key })),
        )
        .await;
    assert_eq!(
        code, 200,
        "unseal the secondary with the primary's key: {body}"
    );
    assert_eq!(body["sealed"], json!(false), "{body}");

    // A client without a token: after enabling, the secondary's own tokens are gone.
    let client = secondary.client("");
    poll_until(
        CONVERGE,
        "secondary reports RECOVERY to vaultrs::sys::status",
        || async {
            match vaultrs::sys::status(&client).await {
                Ok(ServerStatus::RECOVERY) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // Bootstrapped and unsealed, a Vault DR secondary's health document says so (Vault
    // checks "not initialised" (501) and "sealed" (503) before "DR secondary" (472)).
    // vaultrs::sys::health itself surfaces the 472 as a server response carrying the
    // health document, which parses as vaultrs's type.
    let health = health_document(vaultrs::sys::health(&client).await, 472);
    assert_eq!(health.replication_dr_mode, "secondary", "{health:?}");

    // With drsecondarycode=200 the same document comes back as a success.
    let endpoint = ReadHealthRequest::builder()
        .drsecondarycode(200u16)
        .build()
        .expect("ReadHealthRequest");
    let health_ok = vaultrs::api::exec_with_no_result(&client, endpoint)
        .await
        .expect("health?drsecondarycode=200");
    assert_eq!(health_ok.replication_dr_mode, "secondary", "{health_ok:?}");

    // Monitors read these flags: a streaming Vault DR secondary is initialised, unsealed
    // and active (Vault answers 501/503 before 472, so a 472 never says sealed).
    for doc in [&health, &health_ok] {
        assert!(
            doc.initialized,
            "DR secondary must report initialized: {doc:?}"
        );
        assert!(
            !doc.sealed,
            "DR secondary must report sealed=false: {doc:?}"
        );
        assert!(!doc.standby, "DR secondary is not a standby: {doc:?}");
    }
}
