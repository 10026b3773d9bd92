"""ACL policies: write them with hvac, attach them to tokens, and check what the tokens
may and may not do."""

from __future__ import annotations

import hvac
import pytest


def kv_read(client, path):
    return client.secrets.kv.v2.read_secret_version(
        path, mount_point="secret", raise_on_deleted_version=True
    )


@pytest.fixture
def app_policy(root_client, unique):
    """A policy allowing reads under secret/<unique>/app/ and writes to one scratch path."""
    name = f"{unique}-app"
    hcl = f"""
path "secret/data/{unique}/app/*" {{
  capabilities = ["read"]
}}
path "secret/metadata/{unique}/app/*" {{
  capabilities = ["list"]
}}
path "secret/data/{unique}/scratch" {{
  capabilities = ["create", "update", "read"]
}}
"""
    root_client.sys.create_or_update_policy(name, hcl)
    kv = root_client.secrets.kv.v2
    kv.create_or_update_secret(f"{unique}/app/db", {"password": "allowed"}, mount_point="secret")
    kv.create_or_update_secret(f"{unique}/other/db", {"password": "denied"}, mount_point="secret")
    return name


def test_policy_read_list_delete(root_client, app_policy):
    read = root_client.sys.read_policy(app_policy)
    assert 'capabilities = ["read"]' in read["data"]["rules"]
    assert app_policy in root_client.sys.list_policies()["data"]["policies"]
    root_client.sys.delete_policy(app_policy)
    assert app_policy not in root_client.sys.list_policies()["data"]["policies"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        root_client.sys.read_policy(app_policy)


def test_policy_names_with_brackets_and_quotes(root_client, unique):
    """Vault takes any name (lowercased); hvac's own tests use names like this one."""
    name = f"['{unique}']"
    root_client.sys.create_or_update_policy(name, 'path "secret/*" { capabilities = ["read"] }')
    assert name.lower() in root_client.sys.list_policies()["data"]["policies"]
    assert root_client.sys.read_policy(name.upper())["data"]["name"] == name.lower()
    root_client.sys.delete_policy(name)
    assert name.lower() not in root_client.sys.list_policies()["data"]["policies"]


def test_invalid_policy_is_rejected(root_client, unique):
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root_client.sys.create_or_update_policy(
            unique, 'path "secret/*" { capabilities = ["fly"] }'
        )


def test_root_policy_cannot_be_changed(root_client):
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root_client.sys.create_or_update_policy("root", 'path "*" { capabilities = ["read"] }')


def test_token_with_policy_reads_allowed_paths(bunker, root_client, app_policy, unique):
    token = root_client.auth.token.create(policies=[app_policy], ttl="10m")["auth"]
    assert sorted(token["policies"]) == sorted(["default", app_policy])
    user = bunker.client(token["client_token"])
    assert kv_read(user, f"{unique}/app/db")["data"]["data"] == {"password": "allowed"}
    user.secrets.kv.v2.create_or_update_secret(
        f"{unique}/scratch", {"note": "mine"}, mount_point="secret"
    )
    assert kv_read(user, f"{unique}/scratch")["data"]["data"] == {"note": "mine"}


def test_token_with_policy_is_forbidden_elsewhere(bunker, root_client, app_policy, unique):
    token = root_client.auth.token.create(policies=[app_policy], ttl="10m")["auth"]
    user = bunker.client(token["client_token"])
    with pytest.raises(hvac.exceptions.Forbidden):
        kv_read(user, f"{unique}/other/db")
    with pytest.raises(hvac.exceptions.Forbidden):
        user.secrets.kv.v2.create_or_update_secret(
            f"{unique}/app/db", {"password": "overwritten"}, mount_point="secret"
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        user.secrets.kv.v2.delete_metadata_and_all_versions(f"{unique}/app/db", mount_point="secret")
    with pytest.raises(hvac.exceptions.Forbidden):
        user.sys.create_or_update_policy("escalate", 'path "*" { capabilities = ["sudo"] }')
    with pytest.raises(hvac.exceptions.Forbidden):
        user.sys.enable_secrets_engine("kv", path=f"{unique}-mine")
    # Nothing was changed by the refused requests.
    assert kv_read(root_client, f"{unique}/app/db")["data"]["data"] == {"password": "allowed"}


def test_raw_403_body_is_vault_shaped(bunker, root_client, app_policy, unique):
    token = root_client.auth.token.create(policies=[app_policy], ttl="10m")["auth"]
    user = bunker.client(token["client_token"])
    resp = user.adapter.get(f"/v1/secret/data/{unique}/other/db", raise_exception=False)
    assert resp.status_code == 403
    errors = resp.json()["errors"]
    assert len(errors) == 1 and "permission denied" in errors[0]


def test_capabilities_reflect_policy(bunker, root_client, app_policy, unique):
    token = root_client.auth.token.create(policies=[app_policy], ttl="10m")["auth"]
    user = bunker.client(token["client_token"])
    allowed = f"secret/data/{unique}/app/db"
    denied = f"secret/data/{unique}/other/db"
    caps = user.sys.get_capabilities(paths=[allowed, denied])
    assert caps[allowed] == ["read"]
    assert caps[denied] == ["deny"]


def test_policy_change_applies_to_existing_tokens(bunker, root_client, app_policy, unique):
    token = root_client.auth.token.create(policies=[app_policy], ttl="10m")["auth"]
    user = bunker.client(token["client_token"])
    assert kv_read(user, f"{unique}/app/db")
    root_client.sys.create_or_update_policy(
        app_policy, {"path": {f"secret/data/{unique}/other/*": {"capabilities": ["read"]}}}
    )
    with pytest.raises(hvac.exceptions.Forbidden):
        kv_read(user, f"{unique}/app/db")
    assert kv_read(user, f"{unique}/other/db")["data"]["data"] == {"password": "denied"}


def test_deny_overrides_grant(bunker, root_client, unique):
    name = f"{unique}-deny"
    root_client.sys.create_or_update_policy(
        name,
        f"""
path "secret/data/{unique}/*" {{ capabilities = ["read", "create", "update"] }}
path "secret/data/{unique}/locked" {{ capabilities = ["deny"] }}
""",
    )
    root_client.secrets.kv.v2.create_or_update_secret(f"{unique}/locked", {"x": "1"}, mount_point="secret")
    root_client.secrets.kv.v2.create_or_update_secret(f"{unique}/open", {"x": "2"}, mount_point="secret")
    user = bunker.client(root_client.auth.token.create(policies=[name])["auth"]["client_token"])
    assert kv_read(user, f"{unique}/open")["data"]["data"] == {"x": "2"}
    with pytest.raises(hvac.exceptions.Forbidden):
        kv_read(user, f"{unique}/locked")


def test_kv_mount_lookup_allowed_for_restricted_token(bunker, root_client, app_policy, unique):
    """`vault kv get` first asks sys/internal/ui/mounts/<path> which KV version a mount is.
    Vault answers that for any token with some capability inside the mount (the endpoint
    is unauthenticated and filtered by the token's ACL), so a read-only policy suffices."""
    token = root_client.auth.token.create(policies=[app_policy], ttl="10m")["auth"]
    user = bunker.client(token["client_token"])
    mount = user.adapter.get(f"/v1/sys/internal/ui/mounts/secret/{unique}/app/db")
    assert mount["data"]["type"] == "kv"
    assert mount["data"]["options"]["version"] == "2"
    assert mount["data"]["path"] == "secret/"


def test_list_permission_applies_to_folder_without_trailing_slash(
    bunker, root_client, app_policy, unique
):
    """Vault appends "/" to the path of every LIST request before the ACL check, so a
    `secret/metadata/x/app/*` list rule allows listing `x/app` however the client spells it
    (hvac and the vault CLI send it without the slash)."""
    token = root_client.auth.token.create(policies=[app_policy], ttl="10m")["auth"]
    user = bunker.client(token["client_token"])
    for path in (f"{unique}/app", f"{unique}/app/"):
        listed = user.secrets.kv.v2.list_secrets(path, mount_point="secret")
        assert listed["data"]["keys"] == ["db"], path
    via_get = user.adapter.get(f"/v1/secret/metadata/{unique}/app", params={"list": "true"})
    assert via_get["data"]["keys"] == ["db"]
