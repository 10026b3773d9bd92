"""Initialise, unseal, health, seal and restart, on a server of its own.

The tests in this module run in order on one fresh server: each step is the state the
next one starts from, as it is for an operator bringing up a new cluster.
"""

from __future__ import annotations

import hvac
import pytest
import requests

from conftest import KEY_SHARES, KEY_THRESHOLD, BunkerServer


@pytest.fixture(scope="module")
def lifecycle_server(server_factory) -> BunkerServer:
    return server_factory("lifecycle")


def test_fresh_server_is_not_initialized(lifecycle_server):
    c = lifecycle_server.client()
    assert c.sys.is_initialized() is False
    status = c.sys.read_seal_status()
    assert status["initialized"] is False
    assert status["sealed"] is True


def test_health_of_uninitialized_server_is_501(lifecycle_server):
    c = lifecycle_server.client()
    resp = c.sys.read_health_status(method="GET")
    assert isinstance(resp, requests.Response)
    assert resp.status_code == 501
    body = resp.json()
    assert body["initialized"] is False
    assert body["sealed"] is True


def test_initialize_returns_five_keys_and_root_token(lifecycle_server):
    c = lifecycle_server.client()
    result = c.sys.initialize(KEY_SHARES, KEY_THRESHOLD)
    assert len(result["keys"]) == KEY_SHARES
    assert len(result["keys_base64"]) == KEY_SHARES
    assert len(set(result["keys"])) == KEY_SHARES, "key shares must differ"
    for hex_key in result["keys"]:
        bytes.fromhex(hex_key)
    assert isinstance(result["root_token"], str) and result["root_token"]
    lifecycle_server.keys = result["keys"]
    lifecycle_server.keys_base64 = result["keys_base64"]
    lifecycle_server.root_token = result["root_token"]
    assert c.sys.is_initialized() is True


def test_second_initialize_is_rejected(lifecycle_server):
    c = lifecycle_server.client()
    with pytest.raises(hvac.exceptions.InvalidRequest):
        c.sys.initialize(KEY_SHARES, KEY_THRESHOLD)


def test_initialized_server_starts_sealed(lifecycle_server):
    c = lifecycle_server.client()
    assert c.sys.is_sealed() is True
    status = c.sys.read_seal_status()
    assert status["t"] == KEY_THRESHOLD
    assert status["n"] == KEY_SHARES
    assert status["progress"] == 0
    resp = c.sys.read_health_status(method="GET")
    assert resp.status_code == 503
    assert resp.json()["sealed"] is True


def test_sealed_server_refuses_secret_requests(lifecycle_server):
    c = lifecycle_server.client(lifecycle_server.root_token)
    with pytest.raises(hvac.exceptions.VaultDown):
        c.secrets.kv.v2.read_secret_version("anything", raise_on_deleted_version=True)


def test_malformed_unseal_key_is_rejected_without_progress(lifecycle_server):
    c = lifecycle_server.client()
    with pytest.raises(hvac.exceptions.InvalidRequest):
        c.sys.submit_unseal_key("this-is-not-a-key-share")
    status = c.sys.read_seal_status()
    assert status["sealed"] is True
    assert status["progress"] == 0


def test_shares_from_another_cluster_do_not_unseal(lifecycle_server, bunker):
    """Well-formed shares of a different root key count as progress, but combining them
    fails at the threshold: the server stays sealed and progress starts again."""
    c = lifecycle_server.client()
    foreign = bunker.keys[:KEY_THRESHOLD]
    for i, key in enumerate(foreign[:-1], start=1):
        status = c.sys.submit_unseal_key(key)
        assert status["sealed"] is True
        assert status["progress"] == i
    with pytest.raises(hvac.exceptions.InvalidRequest):
        c.sys.submit_unseal_key(foreign[-1])
    status = c.sys.read_seal_status()
    assert status["sealed"] is True
    assert status["progress"] == 0


def test_unseal_reset_clears_progress(lifecycle_server):
    c = lifecycle_server.client()
    status = c.sys.submit_unseal_key(lifecycle_server.keys[0])
    assert status["progress"] == 1
    status = c.sys.submit_unseal_key(reset=True)
    assert status["progress"] == 0
    assert status["sealed"] is True


def test_unseal_progress_until_threshold(lifecycle_server):
    c = lifecycle_server.client()
    keys = lifecycle_server.keys
    # Mix hex and base64 encodings of the shares, as operators do.
    submitted = [keys[4], lifecycle_server.keys_base64[1], keys[2]]
    for i, key in enumerate(submitted[:-1], start=1):
        status = c.sys.submit_unseal_key(key)
        assert status["sealed"] is True, f"unsealed after only {i} of {KEY_THRESHOLD} keys"
        assert status["progress"] == i
        assert status["t"] == KEY_THRESHOLD
        assert c.sys.read_seal_status()["progress"] == i
    status = c.sys.submit_unseal_key(submitted[-1])
    assert status["sealed"] is False
    assert status["progress"] == 0
    assert c.sys.is_sealed() is False


def test_health_fields_when_active(lifecycle_server):
    c = lifecycle_server.client()
    resp = c.sys.read_health_status(method="GET")
    assert resp["initialized"] is True
    assert resp["sealed"] is False
    assert resp["standby"] is False
    assert resp["performance_standby"] is False
    assert resp["replication_dr_mode"] == "disabled"
    assert resp["replication_performance_mode"] == "disabled"
    assert isinstance(resp["server_time_utc"], int) and resp["server_time_utc"] > 0
    assert isinstance(resp["version"], str) and resp["version"]
    assert resp["cluster_id"]


def test_health_head_and_custom_codes(lifecycle_server):
    c = lifecycle_server.client()
    head = c.sys.read_health_status(method="HEAD")
    assert head.status_code == 200
    assert head.text == ""
    custom = c.sys.read_health_status(method="GET", active_code=299)
    assert custom.status_code == 299
    assert custom.json()["sealed"] is False


def test_seal_then_is_sealed(lifecycle_server):
    root = lifecycle_server.client(lifecycle_server.root_token)
    root.sys.enable_secrets_engine("kv", path="persist", options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret("durable", {"v": "1"}, mount_point="persist")
    root.sys.seal()
    assert root.sys.is_sealed() is True
    assert root.sys.read_health_status(method="GET").status_code == 503
    with pytest.raises(hvac.exceptions.VaultDown):
        root.secrets.kv.v2.read_secret_version(
            "durable", mount_point="persist", raise_on_deleted_version=True
        )


def test_unseal_again_keeps_data(lifecycle_server):
    lifecycle_server.unseal()
    root = lifecycle_server.client(lifecycle_server.root_token)
    got = root.secrets.kv.v2.read_secret_version(
        "durable", mount_point="persist", raise_on_deleted_version=True
    )
    assert got["data"]["data"] == {"v": "1"}


def test_restart_comes_back_sealed_with_data(lifecycle_server):
    """Embedded storage is durable: after a process restart the server is initialised,
    sealed, and after unsealing the root token, mounts and secrets are all still there."""
    lifecycle_server.restart()
    c = lifecycle_server.client()
    assert c.sys.is_initialized() is True
    assert c.sys.is_sealed() is True
    lifecycle_server.unseal()
    root = lifecycle_server.client(lifecycle_server.root_token)
    assert "persist/" in root.sys.list_mounted_secrets_engines()["data"]
    got = root.secrets.kv.v2.read_secret_version(
        "durable", mount_point="persist", raise_on_deleted_version=True
    )
    assert got["data"]["data"] == {"v": "1"}
