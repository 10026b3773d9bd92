//! Response wrapping: `vaultrs::api::ResponseWrapper` (X-Vault-Wrap-TTL: 10m) and
//! `vaultrs::sys::wrapping::{lookup, unwrap}`.

use serde_json::{json, Value};
use vaultrs::api::kv2::requests::ReadSecretRequest;
use vaultrs::api::ResponseWrapper;
use vaultrs::error::ClientError;

use crate::harness::{expect_status, Server};

const SECRET: &str = "wrapped/db";

fn read_request() -> ReadSecretRequest {
    ReadSecretRequest::builder()
        .mount("secret")
        .path(SECRET)
        .build()
        .expect("ReadSecretRequest")
}

#[tokio::test]
async fn wrapped_read_can_be_looked_up_and_unwrapped_once() {
    let server = Server::dev().await;
    let client = server.root_client();
    vaultrs::kv2::set(&client, "secret", SECRET, &json!({"password": "s3cret"}))
        .await
        .expect("seed");

    let wrapped = read_request()
        .wrap(&client)
        .await
        .expect("wrapped kv2 read");
    assert!(!wrapped.info.token.is_empty());
    assert_eq!(wrapped.info.ttl, 600, "vaultrs asks for a 10m wrap TTL");
    assert_eq!(wrapped.info.creation_path, "secret/data/wrapped/db");
    assert!(!wrapped.info.creation_time.is_empty());

    let info = wrapped.lookup(&client).await.expect("wrapping lookup");
    assert_eq!(info.creation_path, "secret/data/wrapped/db");
    assert_eq!(info.creation_ttl, 600);
    assert!(!info.creation_time.is_empty());

    let secret = wrapped.unwrap(&client).await.expect("unwrap");
    assert_eq!(secret.data, json!({"password": "s3cret"}));
    assert_eq!(secret.metadata.version, 1);

    // Single use: a second unwrap fails and lookup reports the token as invalid.
    expect_status(wrapped.unwrap(&client).await, 400);
    match wrapped.lookup(&client).await {
        Err(ClientError::WrapInvalidError) => {}
        other => {
            panic!("lookup of a used wrapping token: expected WrapInvalidError, got {other:?}")
        }
    }
}

#[tokio::test]
async fn sys_wrapping_functions_with_the_wrapping_token_as_client_token() {
    let server = Server::dev().await;
    let client = server.root_client();
    vaultrs::kv2::set(&client, "secret", SECRET, &json!({"api_key": "k-1"}))
        .await
        .expect("seed");
    let wrapped = read_request()
        .wrap(&client)
        .await
        .expect("wrapped kv2 read");
    let token = wrapped.info.token.clone();

    let info = vaultrs::sys::wrapping::lookup(&client, &token)
        .await
        .expect("sys::wrapping::lookup");
    assert_eq!(info.creation_path, "secret/data/wrapped/db");

    // The usual hand-off: the receiver holds only the wrapping token and unwraps with it
    // as its own token (no token in the body).
    let receiver = server.client(&token);
    let unwrapped: Value = vaultrs::sys::wrapping::unwrap(&receiver, None)
        .await
        .expect("sys::wrapping::unwrap");
    assert_eq!(unwrapped["data"], json!({"api_key": "k-1"}), "{unwrapped}");
    assert_eq!(unwrapped["metadata"]["version"], json!(1), "{unwrapped}");

    expect_status(
        vaultrs::sys::wrapping::unwrap::<Value>(&client, Some(&token)).await,
        400,
    );
}
