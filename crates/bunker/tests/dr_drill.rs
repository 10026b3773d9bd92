//! The README's disaster-recovery drill, the part applications depend on, through the `bunker`
//! CLI with the README's own commands: on the primary a KV secret, a userpass user, an AppRole
//! role with a secret id and a transit key with a ciphertext; the primary is killed with -9 and
//! the DR secondary promoted with its unseal keys; there the same user and the same role id and
//! secret id log in, and the ciphertext decrypts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::dr::{adopt_credentials, dr_server, promote_with_keys, wait_converged};
use common::{cli, TestServer};
use serde_json::json;

/// Run the CLI against `s`, which must succeed; its output without the trailing newline.
fn run(s: &TestServer, args: &[&str]) -> String {
    let (code, out, err) = cli(s, args);
    assert_eq!(code, 0, "bunker {}: {err}{out}", args.join(" "));
    out.trim_end().to_owned()
}

#[test]
fn applications_log_in_and_decrypt_on_the_promoted_secondary() {
    let mut a = dr_server();
    let mut b = dr_server();
    run(&a, &["login", a.root().unwrap()]);

    // --- the README's setup on A ---
    run(
        &a,
        &["secrets", "enable", "-path=secret", "-version=2", "kv"],
    );
    run(&a, &["kv", "put", "secret/app/db", "password=hunter2"]);
    run(&a, &["auth", "enable", "userpass"]);
    run(
        &a,
        &[
            "write",
            "auth/userpass/users/ann",
            "password=ann-pw",
            "token_policies=default",
        ],
    );
    run(&a, &["auth", "enable", "approle"]);
    run(
        &a,
        &["write", "auth/approle/role/app", "token_policies=default"],
    );
    let role_id = run(
        &a,
        &["read", "-field=role_id", "auth/approle/role/app/role-id"],
    );
    let secret_id = run(
        &a,
        &[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/app/secret-id",
        ],
    );
    run(&a, &["secrets", "enable", "transit"]);
    run(&a, &["write", "-f", "transit/keys/orders"]);
    let plaintext = format!("plaintext={}", STANDARD.encode("card 4111"));
    let ciphertext = run(
        &a,
        &[
            "write",
            "-field=ciphertext",
            "transit/encrypt/orders",
            &plaintext,
        ],
    );
    assert!(ciphertext.starts_with("vault:v1:"), "{ciphertext}");

    // --- A becomes the primary, B its DR secondary, unsealed with A's keys ---
    run(&a, &["operator", "replication", "primary", "enable"]);
    let token = run(
        &a,
        &[
            "operator",
            "replication",
            "primary",
            "secondary-token",
            "-id=site-b",
            "-ttl=10m",
        ],
    );
    run(&b, &["login", b.root().unwrap()]);
    let waited = run(
        &b,
        &[
            "operator",
            "replication",
            "secondary",
            "enable",
            &format!("-token={token}"),
            "-wait",
        ],
    );
    assert!(
        waited.contains("Success! The secondary streams WALs from the primary"),
        "{waited}"
    );
    wait_converged(&a, &b);
    adopt_credentials(&mut b, &a);
    b.unseal();

    // --- site A is lost: promote B with A's unseal key shares ---
    a.kill9();
    let done = promote_with_keys(&b, &a.keys);
    assert_eq!(done["data"]["complete"], json!(true), "{done}");
    run(&b, &["login", b.root().unwrap()]);
    assert_eq!(
        run(&b, &["kv", "get", "-field=password", "secret/app/db"]),
        "hunter2"
    );

    // The same user, the same role id and secret id log in; the ciphertext decrypts.
    let user_token = run(
        &b,
        &[
            "login",
            "-method=userpass",
            "-no-store",
            "-field=token",
            "username=ann",
            "password=ann-pw",
        ],
    );
    let app_token = run(
        &b,
        &[
            "write",
            "-field=token",
            "auth/approle/login",
            &format!("role_id={role_id}"),
            &format!("secret_id={secret_id}"),
        ],
    );
    for token in [&user_token, &app_token] {
        let (st, me) = b.get("auth/token/lookup-self", Some(token));
        assert_eq!(st, 200, "a login token on the promoted cluster: {me}");
    }
    let decrypted = run(
        &b,
        &[
            "write",
            "-field=plaintext",
            "transit/decrypt/orders",
            &format!("ciphertext={ciphertext}"),
        ],
    );
    assert_eq!(STANDARD.decode(decrypted).unwrap(), b"card 4111");
}
