"""Token create, lookup, renew, revoke, and batch tokens."""

from __future__ import annotations

import hvac
import pytest


def test_create_and_lookup(root_client, unique):
    created = root_client.auth.token.create(
        policies=["default"],
        ttl="1h",
        renewable=True,
        display_name=unique,
        meta={"team": "payments"},
    )
    auth = created["auth"]
    assert auth["client_token"] and auth["accessor"]
    assert auth["renewable"] is True
    assert 3590 <= auth["lease_duration"] <= 3600
    assert auth["token_type"] == "service"

    info = root_client.auth.token.lookup(auth["client_token"])["data"]
    assert info["accessor"] == auth["accessor"]
    assert info["policies"] == ["default"]
    assert info["display_name"] == f"token-{unique}"
    assert info["meta"] == {"team": "payments"}
    assert 3500 <= info["ttl"] <= 3600
    assert info["renewable"] is True
    assert info["type"] == "service"

    by_accessor = root_client.auth.token.lookup_accessor(auth["accessor"])["data"]
    assert by_accessor["display_name"] == f"token-{unique}"
    assert by_accessor["id"] == "", "lookup by accessor must not reveal the token"


def test_lookup_self(bunker, root_client):
    token = root_client.auth.token.create(policies=["default"], ttl="30m")["auth"]
    me = bunker.client(token["client_token"]).auth.token.lookup_self()["data"]
    assert me["accessor"] == token["accessor"]
    assert me["policies"] == ["default"]


def test_root_token_lookup_self(root_client):
    me = root_client.auth.token.lookup_self()["data"]
    assert me["policies"] == ["root"]
    assert me["ttl"] == 0
    assert me["expire_time"] is None


def test_renew_self_extends_ttl(bunker, root_client):
    token = root_client.auth.token.create(
        policies=["default"], ttl="2m", explicit_max_ttl="2h", renewable=True
    )["auth"]
    user = bunker.client(token["client_token"])
    renewed = user.auth.token.renew_self(increment="1h")["auth"]
    assert 3590 <= renewed["lease_duration"] <= 3600
    assert 3500 <= user.auth.token.lookup_self()["data"]["ttl"] <= 3600


def test_renew_is_capped_by_explicit_max_ttl(bunker, root_client):
    token = root_client.auth.token.create(
        policies=["default"], ttl="2m", explicit_max_ttl="5m", renewable=True
    )["auth"]
    user = bunker.client(token["client_token"])
    renewed = user.auth.token.renew_self(increment="1h")["auth"]
    assert renewed["lease_duration"] <= 300


def test_non_renewable_token_cannot_renew(bunker, root_client):
    token = root_client.auth.token.create(policies=["default"], ttl="5m", renewable=False)["auth"]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        bunker.client(token["client_token"]).auth.token.renew_self(increment="1h")


def test_revoked_token_is_forbidden(bunker, root_client):
    token = root_client.auth.token.create(policies=["default"], ttl="10m")["auth"]
    user = bunker.client(token["client_token"])
    assert user.auth.token.lookup_self()["data"]["accessor"] == token["accessor"]
    root_client.auth.token.revoke(token["client_token"])
    with pytest.raises(hvac.exceptions.Forbidden):
        user.auth.token.lookup_self()
    assert user.is_authenticated() is False


def test_revoke_self(bunker, root_client):
    user = bunker.client(root_client.auth.token.create(policies=["default"])["auth"]["client_token"])
    user.auth.token.revoke_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        user.auth.token.lookup_self()


def test_revoking_parent_revokes_children_not_orphans(bunker, root_client):
    # The default policy does not allow creating tokens: give the parent one that does.
    root_client.sys.create_or_update_policy(
        "token-creator", 'path "auth/token/create" { capabilities = ["update"] }'
    )
    parent = root_client.auth.token.create(policies=["token-creator"], ttl="10m")["auth"]
    parent_client = bunker.client(parent["client_token"])
    child = parent_client.auth.token.create(policies=["default"], ttl="10m")["auth"]
    orphan = root_client.auth.token.create_orphan(policies=["default"], ttl="10m")["auth"]
    child_client = bunker.client(child["client_token"])
    orphan_client = bunker.client(orphan["client_token"])
    assert child_client.auth.token.lookup_self()["data"]["orphan"] is False
    assert orphan_client.auth.token.lookup_self()["data"]["orphan"] is True

    root_client.auth.token.revoke(parent["client_token"])
    with pytest.raises(hvac.exceptions.Forbidden):
        child_client.auth.token.lookup_self()
    assert orphan_client.auth.token.lookup_self()["data"]["orphan"] is True


def test_child_token_cannot_exceed_parent_policies(bunker, root_client):
    root_client.sys.create_or_update_policy(
        "token-creator", 'path "auth/token/create" { capabilities = ["update"] }'
    )
    parent = root_client.auth.token.create(policies=["token-creator"], ttl="10m")["auth"]
    parent_client = bunker.client(parent["client_token"])
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        parent_client.auth.token.create(policies=["root"])
    assert "child policies must be subset of parent" in str(err.value)


def test_num_uses_limits_token(bunker, root_client):
    token = root_client.auth.token.create(policies=["default"], num_uses=2)["auth"]
    user = bunker.client(token["client_token"])
    user.auth.token.lookup_self()
    user.auth.token.lookup_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        user.auth.token.lookup_self()


def test_batch_token(bunker, root_client, unique):
    root_client.sys.create_or_update_policy(
        unique, f'path "secret/data/{unique}" {{ capabilities = ["read"] }}'
    )
    root_client.secrets.kv.v2.create_or_update_secret(unique, {"v": "batch"}, mount_point="secret")
    created = root_client.auth.token.create(policies=[unique], type="batch", ttl="10m")["auth"]
    assert created["token_type"] == "batch"
    assert created["renewable"] is False
    assert created["accessor"] == "", "batch tokens have no accessor"

    user = bunker.client(created["client_token"])
    got = user.secrets.kv.v2.read_secret_version(
        unique, mount_point="secret", raise_on_deleted_version=True
    )
    assert got["data"]["data"] == {"v": "batch"}
    with pytest.raises(hvac.exceptions.Forbidden):
        user.secrets.kv.v2.read_secret_version(
            f"{unique}-other", mount_point="secret", raise_on_deleted_version=True
        )

    info = user.auth.token.lookup_self()["data"]
    assert info["type"] == "batch"
    assert sorted(info["policies"]) == sorted(["default", unique])
    assert 500 <= info["ttl"] <= 600


def test_batch_token_cannot_be_renewed(bunker, root_client):
    created = root_client.auth.token.create(policies=["default"], type="batch", ttl="10m")["auth"]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        bunker.client(created["client_token"]).auth.token.renew_self()


def test_unknown_token_is_forbidden(bunker):
    stranger = bunker.client("hvs.not-a-real-token")
    with pytest.raises(hvac.exceptions.Forbidden):
        stranger.secrets.kv.v2.read_secret_version("x", mount_point="secret", raise_on_deleted_version=True)
    assert stranger.is_authenticated() is False
