use serde_json::{json, Value};

use super::*;
use crate::test_support::{call, view};
use bunker_sdk::Operation::{Delete, List, Read, Update};

async fn write(s: &StorageView, path: &str, body: Value) -> Result<Response> {
    call(&AppRole, s, Update, path, body, None).await
}

fn field(resp: &Response, name: &str) -> Value {
    resp.data
        .as_ref()
        .and_then(|d| d.get(name))
        .cloned()
        .unwrap_or(Value::Null)
}

async fn role_id(s: &StorageView, role: &str) -> String {
    let r = call(
        &AppRole,
        s,
        Read,
        &format!("role/{role}/role-id"),
        json!({}),
        None,
    )
    .await
    .unwrap();
    field(&r, "role_id").as_str().unwrap().to_owned()
}

#[tokio::test]
async fn login_spends_secret_id_uses_and_ids_are_not_stored_in_clear() {
    let s = view("auth/a/").await;
    write(
        &s,
        "role/web",
        json!({"token_policies": "app", "secret_id_num_uses": 2, "token_ttl": "10m"}),
    )
    .await
    .unwrap();
    let rid = role_id(&s, "web").await;
    let gen = write(
        &s,
        "role/web/secret-id",
        json!({"metadata": "{\"team\":\"a\"}"}),
    )
    .await
    .unwrap();
    let sid = field(&gen, "secret_id").as_str().unwrap().to_owned();
    assert_eq!(field(&gen, "secret_id_num_uses"), json!(2));
    // Neither id appears in any stored key or value.
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        for child in s.list(&dir).await.unwrap() {
            let key = format!("{dir}{child}");
            assert!(!key.contains(&sid) && !key.contains(&rid), "{key}");
            if child.ends_with('/') {
                stack.push(key);
            } else {
                let value =
                    String::from_utf8_lossy(&s.get(&key).await.unwrap().unwrap()).into_owned();
                assert!(!value.contains(&sid), "{key}");
            }
        }
    }
    let body = json!({"role_id": rid, "secret_id": sid});
    let first = write(&s, "login", body.clone())
        .await
        .unwrap()
        .login
        .unwrap();
    assert_eq!(first.params.token_policies, ["app"]);
    assert_eq!(first.metadata["role_name"], "web");
    assert_eq!(first.metadata["team"], "a");
    let looked = write(&s, "role/web/secret-id/lookup", json!({"secret_id": sid}))
        .await
        .unwrap();
    assert_eq!(field(&looked, "secret_id_num_uses"), json!(1));
    assert!(write(&s, "login", body.clone()).await.is_ok());
    let spent = write(&s, "login", body).await.unwrap_err();
    assert_eq!(spent.to_string(), INVALID);
    let gone = write(&s, "role/web/secret-id/lookup", json!({"secret_id": sid}))
        .await
        .unwrap();
    assert!(gone.data.is_none());
    let wrong = write(&s, "login", json!({"role_id": rid, "secret_id": "nope"}))
        .await
        .unwrap_err();
    assert_eq!(wrong.to_string(), INVALID);
    let unknown = write(&s, "login", json!({"role_id": "nope", "secret_id": "x"}))
        .await
        .unwrap_err();
    assert_eq!(unknown.to_string(), INVALID);
}

async fn logs_in_from(s: &StorageView, body: &Value, remote_addr: &str) -> bool {
    call(
        &AppRole,
        s,
        Update,
        "login",
        body.clone(),
        Some(remote_addr),
    )
    .await
    .is_ok()
}

const INVALID: &str = "invalid role or secret ID";

#[tokio::test]
async fn accessors_custom_ids_and_custom_role_ids() {
    let s = view("auth/a/").await;
    write(&s, "role/db", json!({})).await.unwrap();
    write(&s, "role/db/role-id", json!({"role_id": "my-role-id"}))
        .await
        .unwrap();
    assert_eq!(role_id(&s, "db").await, "my-role-id");
    write(&s, "role/other", json!({})).await.unwrap();
    assert!(
        write(&s, "role/other/role-id", json!({"role_id": "my-role-id"}))
            .await
            .is_err()
    );
    let custom = write(
        &s,
        "role/db/custom-secret-id",
        json!({"secret_id": "s3cret", "num_uses": 5}),
    )
    .await
    .unwrap();
    assert!(write(
        &s,
        "role/db/custom-secret-id",
        json!({"secret_id": "s3cret"})
    )
    .await
    .is_err());
    let accessor = field(&custom, "secret_id_accessor")
        .as_str()
        .unwrap()
        .to_owned();
    let listed = call(&AppRole, &s, List, "role/db/secret-id", json!({}), None)
        .await
        .unwrap();
    assert_eq!(field(&listed, "keys"), json!([accessor]));
    let by_accessor = write(
        &s,
        "role/db/secret-id-accessor/lookup",
        json!({"secret_id_accessor": accessor}),
    )
    .await
    .unwrap();
    assert_eq!(field(&by_accessor, "secret_id_num_uses"), json!(5));
    // Another role's accessor is not found through this role.
    assert!(write(
        &s,
        "role/other/secret-id-accessor/lookup",
        json!({"secret_id_accessor": accessor})
    )
    .await
    .is_err());
    assert!(write(
        &s,
        "login",
        json!({"role_id": "my-role-id", "secret_id": "s3cret"})
    )
    .await
    .is_ok());
    write(
        &s,
        "role/db/secret-id-accessor/destroy",
        json!({"secret_id_accessor": accessor}),
    )
    .await
    .unwrap();
    assert!(write(
        &s,
        "login",
        json!({"role_id": "my-role-id", "secret_id": "s3cret"})
    )
    .await
    .is_err());
    // Destroy by id, then delete the role: its role id no longer logs in.
    let gen = write(&s, "role/db/secret-id", json!({})).await.unwrap();
    let sid = field(&gen, "secret_id");
    write(&s, "role/db/secret-id/destroy", json!({"secret_id": sid}))
        .await
        .unwrap();
    assert!(write(
        &s,
        "login",
        json!({"role_id": "my-role-id", "secret_id": sid})
    )
    .await
    .is_err());
    call(&AppRole, &s, Delete, "role/db", json!({}), None)
        .await
        .unwrap();
    assert!(role_by_role_id(&s, "my-role-id").await.unwrap().is_none());
}

#[tokio::test]
async fn limits_cidrs_and_roles_without_secret_ids() {
    let s = view("auth/a/").await;
    write(
        &s,
        "role/r",
        json!({"secret_id_num_uses": 3, "secret_id_ttl": "1h"}),
    )
    .await
    .unwrap();
    assert!(write(&s, "role/r/secret-id", json!({"num_uses": 4}))
        .await
        .is_err());
    assert!(write(&s, "role/r/secret-id", json!({"ttl": "2h"}))
        .await
        .is_err());
    let gen = write(&s, "role/r/secret-id", json!({"cidr_list": "10.0.0.0/8"}))
        .await
        .unwrap();
    assert_eq!(field(&gen, "secret_id_ttl"), json!(3600));
    let body = json!({"role_id": role_id(&s, "r").await, "secret_id": field(&gen, "secret_id")});
    assert!(!logs_in_from(&s, &body, "127.0.0.1").await);
    assert!(logs_in_from(&s, &body, "10.9.9.9").await);
    // A role without secret ids needs another constraint, and then logs in by role id alone.
    let unbound = json!({"bind_secret_id": false});
    assert!(write(&s, "role/open", unbound).await.is_err());
    let bound = json!({"bind_secret_id": false, "secret_id_bound_cidrs": "127.0.0.1/32"});
    write(&s, "role/open", bound).await.unwrap();
    let body = json!({"role_id": role_id(&s, "open").await});
    assert!(logs_in_from(&s, &body, "127.0.0.1").await);
    assert!(!logs_in_from(&s, &body, "127.0.0.2").await);
    let tidy = write(&s, "tidy/secret-id", json!({})).await.unwrap();
    assert_eq!(tidy.warnings.len(), 1);
}

#[tokio::test]
async fn per_field_role_endpoints_read_set_and_reset_one_setting() {
    let s = view("auth/a/").await;
    write(
        &s,
        "role/ci",
        json!({"token_policies": "app", "secret_id_ttl": "10m"}),
    )
    .await
    .unwrap();
    let read = |path: &'static str| call(&AppRole, &s, Read, path, json!({}), None);
    let policies = read("role/ci/policies").await.unwrap();
    assert_eq!(field(&policies, "token_policies"), json!(["app"]));
    assert_eq!(field(&policies, "policies"), json!(["app"]));
    write(&s, "role/ci/policies", json!({"policies": "a,b"}))
        .await
        .unwrap();
    write(
        &s,
        "role/ci/secret-id-num-uses",
        json!({"secret_id_num_uses": 3}),
    )
    .await
    .unwrap();
    let role = read("role/ci").await.unwrap();
    assert_eq!(field(&role, "token_policies"), json!(["a", "b"]));
    assert_eq!(field(&role, "secret_id_num_uses"), json!(3));
    assert_eq!(
        field(&role, "secret_id_ttl"),
        json!(600),
        "other fields kept"
    );
    call(
        &AppRole,
        &s,
        Delete,
        "role/ci/secret-id-ttl",
        json!({}),
        None,
    )
    .await
    .unwrap();
    let ttl = read("role/ci/secret-id-ttl").await.unwrap();
    assert_eq!(field(&ttl, "secret_id_ttl"), json!(0));
    // A write without the field, and an unknown role, are refused.
    assert!(write(&s, "role/ci/token-ttl", json!({"nope": 1}))
        .await
        .is_err());
    assert!(read("role/nobody/policies").await.is_err());
}

#[tokio::test]
async fn a_secret_id_may_narrow_the_roles_cidrs_but_not_widen_them() {
    let s = view("auth/a/").await;
    write(
        &s,
        "role/ci",
        json!({"secret_id_bound_cidrs": "10.0.0.0/8"}),
    )
    .await
    .unwrap();
    let narrower = write(&s, "role/ci/secret-id", json!({"cidr_list": "10.1.0.0/16"})).await;
    assert!(narrower.is_ok(), "{:?}", narrower.err());
    let wider = write(&s, "role/ci/secret-id", json!({"cidr_list": "0.0.0.0/0"})).await;
    assert!(
        matches!(&wider, Err(LogicalError::InvalidRequest(m)) if m.contains("CIDR restrictions")),
        "{:?}",
        wider.err()
    );
}
