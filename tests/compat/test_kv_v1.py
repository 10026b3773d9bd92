"""KV version 1 through hvac's `secrets.kv.v1`."""

from __future__ import annotations

import hvac
import pytest

MOUNT = "kv1"


@pytest.fixture(scope="module")
def kv1(bunker):
    root = bunker.client(bunker.root_token)
    root.sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "1"})
    return MOUNT


def test_kv1_mount_is_version_1(root_client, kv1):
    mounts = root_client.sys.list_mounted_secrets_engines()["data"]
    assert mounts[f"{kv1}/"]["type"] == "kv"
    assert mounts[f"{kv1}/"]["options"]["version"] == "1"


def test_kv1_round_trip(root_client, kv1, unique):
    kv = root_client.secrets.kv.v1
    secret = {"username": "app", "password": "s3cr3t", "port": 5432, "tags": ["a", "b"]}
    kv.create_or_update_secret(f"{unique}/db", secret, mount_point=kv1)
    got = kv.read_secret(f"{unique}/db", mount_point=kv1)
    assert got["data"] == secret


def test_kv1_read_reports_refresh_interval(root_client, kv1, unique):
    """Vault reports KV v1 reads with the mount's default lease TTL (768h unless tuned) as
    `lease_duration`, shown as `refresh_interval` by `vault read`; a stored `ttl` field
    overrides it. Tools such as consul-template schedule their re-reads from this value."""
    kv = root_client.secrets.kv.v1
    kv.create_or_update_secret(f"{unique}/plain", {"v": "1"}, mount_point=kv1)
    kv.create_or_update_secret(f"{unique}/ttl", {"v": "1", "ttl": "30m"}, mount_point=kv1)
    assert kv.read_secret(f"{unique}/ttl", mount_point=kv1)["lease_duration"] == 1800
    assert kv.read_secret(f"{unique}/plain", mount_point=kv1)["lease_duration"] == 2764800


def test_kv1_overwrite_replaces_whole_secret(root_client, kv1, unique):
    kv = root_client.secrets.kv.v1
    kv.create_or_update_secret(unique, {"a": "1", "b": "2"}, mount_point=kv1)
    kv.create_or_update_secret(unique, {"c": "3"}, mount_point=kv1)
    assert kv.read_secret(unique, mount_point=kv1)["data"] == {"c": "3"}


def test_kv1_list(root_client, kv1, unique):
    kv = root_client.secrets.kv.v1
    kv.create_or_update_secret(f"{unique}/one", {"x": "1"}, mount_point=kv1)
    kv.create_or_update_secret(f"{unique}/two", {"x": "2"}, mount_point=kv1)
    kv.create_or_update_secret(f"{unique}/sub/three", {"x": "3"}, mount_point=kv1)
    listed = kv.list_secrets(unique, mount_point=kv1)
    assert sorted(listed["data"]["keys"]) == ["one", "sub/", "two"]


def test_kv1_delete(root_client, kv1, unique):
    kv = root_client.secrets.kv.v1
    kv.create_or_update_secret(unique, {"x": "1"}, mount_point=kv1)
    kv.delete_secret(unique, mount_point=kv1)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret(unique, mount_point=kv1)


def test_kv1_missing_secret_is_404(root_client, kv1, unique):
    with pytest.raises(hvac.exceptions.InvalidPath):
        root_client.secrets.kv.v1.read_secret(f"{unique}/missing", mount_point=kv1)
