"""Response wrapping: wrap a response in a single-use token, then unwrap it once."""

from __future__ import annotations

import hvac
import pytest


def test_wrapped_token_create(bunker, root_client):
    wrapped = root_client.auth.token.create(policies=["default"], ttl="10m", wrap_ttl="60s")
    assert wrapped["auth"] is None, "the wrapped response must not carry the new token"
    info = wrapped["wrap_info"]
    assert info["token"] and info["accessor"]
    assert info["ttl"] == 60
    assert info["creation_path"] == "auth/token/create"
    assert info["creation_time"]

    unwrapped = root_client.sys.unwrap(info["token"])
    new_token = unwrapped["auth"]["client_token"]
    assert new_token
    me = bunker.client(new_token).auth.token.lookup_self()["data"]
    assert me["policies"] == ["default"]


def test_unwrap_works_only_once(root_client):
    info = root_client.auth.token.create(policies=["default"], wrap_ttl="60s")["wrap_info"]
    root_client.sys.unwrap(info["token"])
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        root_client.sys.unwrap(info["token"])
    assert "wrapping token is not valid or does not exist" in str(err.value)


def test_unwrap_with_wrapping_token_as_client_token(bunker, root_client, unique):
    """`vault unwrap` with no argument sends the wrapping token as X-Vault-Token."""
    root_client.secrets.kv.v2.create_or_update_secret(unique, {"api_key": "k-123"}, mount_point="secret")
    resp = root_client.adapter.get(
        f"/v1/secret/data/{unique}", headers={"X-Vault-Wrap-TTL": "2m"}
    )
    info = resp["wrap_info"]
    assert info["ttl"] == 120
    assert info["creation_path"] == f"secret/data/{unique}"
    assert resp["data"] is None

    holder = bunker.client(info["token"])
    unwrapped = holder.sys.unwrap()
    assert unwrapped["data"]["data"] == {"api_key": "k-123"}
    with pytest.raises((hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden)):
        holder.sys.unwrap()


def test_write_with_wrap_ttl_via_client(bunker, root_client):
    """hvac's generic write with wrap_ttl, here on auth/token/create."""
    resp = root_client.write_data(
        "auth/token/create", data={"policies": ["default"], "ttl": "5m"}, wrap_ttl="90s"
    )
    assert resp["wrap_info"]["ttl"] == 90
    token = root_client.sys.unwrap(resp["wrap_info"]["token"])["auth"]["client_token"]
    assert bunker.client(token).auth.token.lookup_self()["data"]["policies"] == ["default"]


def test_wrap_arbitrary_data_and_lookup(root_client):
    wrapped = root_client.sys.wrap(payload={"shared": "value", "n": 3}, ttl="5m")
    info = wrapped["wrap_info"]
    assert info["ttl"] == 300
    looked = root_client.adapter.post("/v1/sys/wrapping/lookup", json={"token": info["token"]})
    assert looked["data"]["creation_ttl"] == 300
    assert looked["data"]["creation_path"] == "sys/wrapping/wrap"
    # Looking up does not consume the token.
    assert root_client.sys.unwrap(info["token"])["data"] == {"shared": "value", "n": 3}


def test_rewrap_invalidates_old_token(root_client):
    info = root_client.sys.wrap(payload={"k": "v"}, ttl="5m")["wrap_info"]
    rewrapped = root_client.adapter.post("/v1/sys/wrapping/rewrap", json={"token": info["token"]})
    new_token = rewrapped["wrap_info"]["token"]
    assert new_token != info["token"]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root_client.sys.unwrap(info["token"])
    assert root_client.sys.unwrap(new_token)["data"] == {"k": "v"}


def test_wrapping_token_cannot_read_secrets(bunker, root_client, unique):
    root_client.secrets.kv.v2.create_or_update_secret(unique, {"v": "1"}, mount_point="secret")
    info = root_client.sys.wrap(payload={"k": "v"}, ttl="5m")["wrap_info"]
    with pytest.raises(hvac.exceptions.Forbidden):
        bunker.client(info["token"]).secrets.kv.v2.read_secret_version(
            unique, mount_point="secret", raise_on_deleted_version=True
        )
