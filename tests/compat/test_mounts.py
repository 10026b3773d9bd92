"""Secrets engine mounts: list, enable, tune, disable."""

from __future__ import annotations

import hvac
import pytest


def test_list_mounted_secrets_engines(root_client):
    mounts = root_client.sys.list_mounted_secrets_engines()
    data = mounts["data"]
    assert data["secret/"]["type"] == "kv"
    assert data["sys/"]["type"] == "system"
    assert data["cubbyhole/"]["type"] == "cubbyhole"
    for entry in data.values():
        assert entry["accessor"]
        assert "config" in entry and "default_lease_ttl" in entry["config"]
    # Vault also answers with the mounts at the top level; hvac callers use both shapes.
    assert mounts["secret/"]["type"] == "kv"


def test_enable_tune_disable(root_client, unique):
    root_client.sys.enable_secrets_engine(
        "kv", path=unique, description="team secrets", options={"version": "2"}
    )
    entry = root_client.sys.list_mounted_secrets_engines()["data"][f"{unique}/"]
    assert entry["description"] == "team secrets"
    assert entry["options"]["version"] == "2"

    root_client.sys.tune_mount_configuration(unique, default_lease_ttl="1h", max_lease_ttl="2h")
    config = root_client.sys.read_mount_configuration(unique)["data"]
    assert config["default_lease_ttl"] == 3600
    assert config["max_lease_ttl"] == 7200

    root_client.secrets.kv.v2.create_or_update_secret("x", {"v": "1"}, mount_point=unique)
    root_client.sys.disable_secrets_engine(unique)
    assert f"{unique}/" not in root_client.sys.list_mounted_secrets_engines()["data"]
    with pytest.raises((hvac.exceptions.InvalidPath, hvac.exceptions.Forbidden)):
        root_client.secrets.kv.v2.read_secret_version("x", mount_point=unique, raise_on_deleted_version=True)

    # Re-enabling at the same path starts empty.
    root_client.sys.enable_secrets_engine("kv", path=unique, options={"version": "2"})
    with pytest.raises(hvac.exceptions.InvalidPath):
        root_client.secrets.kv.v2.read_secret_version("x", mount_point=unique, raise_on_deleted_version=True)


def test_enable_on_taken_path_fails(root_client):
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root_client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})


def test_unknown_engine_type_fails(root_client, unique):
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root_client.sys.enable_secrets_engine("no-such-engine", path=unique)


def test_cubbyhole_is_private_to_each_token(bunker, root_client):
    a = bunker.client(root_client.auth.token.create(policies=["default"])["auth"]["client_token"])
    b = bunker.client(root_client.auth.token.create(policies=["default"])["auth"]["client_token"])
    a.write_data("cubbyhole/note", data={"mine": "a"})
    assert a.read("cubbyhole/note")["data"] == {"mine": "a"}
    assert b.read("cubbyhole/note") is None


def test_a_fresh_mount_reads_the_system_ttls(root_client, unique):
    """Vault shows the effective TTLs, the system's 768h, where the mount sets none."""
    root_client.sys.enable_secrets_engine("kv", path=unique)
    config = root_client.sys.read_mount_configuration(unique)["data"]
    assert config["default_lease_ttl"] == 2764800
    assert config["max_lease_ttl"] == 2764800


def test_move_backend_keeps_the_data(root_client, unique):
    root_client.sys.enable_secrets_engine("kv", path=unique, options={"version": "2"})
    root_client.secrets.kv.v2.create_or_update_secret("x", {"v": "1"}, mount_point=unique)
    moved = root_client.sys.move_backend(unique, f"{unique}-moved")
    migration_id = moved["data"]["migration_id"]
    status = root_client.read(f"sys/remount/status/{migration_id}")["data"]
    assert status["migration_info"]["status"] == "success"
    secret = root_client.secrets.kv.v2.read_secret_version(
        "x", mount_point=f"{unique}-moved", raise_on_deleted_version=True
    )
    assert secret["data"]["data"] == {"v": "1"}
    assert f"{unique}/" not in root_client.sys.list_mounted_secrets_engines()["data"]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root_client.sys.move_backend(f"{unique}-moved", "sys/elsewhere")
