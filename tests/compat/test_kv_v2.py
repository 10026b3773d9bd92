"""KV version 2 at secret/ through hvac's `secrets.kv.v2`: versions, CAS, soft delete,
undelete, destroy, metadata and patch."""

from __future__ import annotations

import hvac
import pytest

MOUNT = "secret"


def read(client, path, version=None):
    return client.secrets.kv.v2.read_secret_version(
        path, version=version, mount_point=MOUNT, raise_on_deleted_version=True
    )


def test_secret_mount_is_kv_version_2(root_client):
    mounts = root_client.sys.list_mounted_secrets_engines()["data"]
    assert mounts["secret/"]["type"] == "kv"
    assert mounts["secret/"]["options"]["version"] == "2"


def test_create_and_update_make_versions(root_client, unique):
    kv = root_client.secrets.kv.v2
    first = kv.create_or_update_secret(unique, {"password": "one"}, mount_point=MOUNT)
    assert first["data"]["version"] == 1
    assert first["data"]["deletion_time"] == ""
    assert first["data"]["destroyed"] is False
    second = kv.create_or_update_secret(unique, {"password": "two"}, mount_point=MOUNT)
    assert second["data"]["version"] == 2

    latest = read(root_client, unique)
    assert latest["data"]["data"] == {"password": "two"}
    assert latest["data"]["metadata"]["version"] == 2
    assert read(root_client, unique, version=1)["data"]["data"] == {"password": "one"}
    assert read(root_client, unique, version=2)["data"]["data"] == {"password": "two"}


def test_read_missing_version_is_404(root_client, unique):
    root_client.secrets.kv.v2.create_or_update_secret(unique, {"a": "1"}, mount_point=MOUNT)
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(root_client, unique, version=7)
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(root_client, f"{unique}-never-written")


def test_cas_success_and_mismatch(root_client, unique):
    kv = root_client.secrets.kv.v2
    created = kv.create_or_update_secret(unique, {"v": "1"}, cas=0, mount_point=MOUNT)
    assert created["data"]["version"] == 1
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret(unique, {"v": "again"}, cas=0, mount_point=MOUNT)
    updated = kv.create_or_update_secret(unique, {"v": "2"}, cas=1, mount_point=MOUNT)
    assert updated["data"]["version"] == 2
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        kv.create_or_update_secret(unique, {"v": "stale"}, cas=1, mount_point=MOUNT)
    assert "check-and-set" in str(err.value)
    assert read(root_client, unique)["data"]["data"] == {"v": "2"}


def test_cas_required_by_metadata(root_client, unique):
    kv = root_client.secrets.kv.v2
    kv.create_or_update_secret(unique, {"v": "1"}, mount_point=MOUNT)
    kv.update_metadata(unique, cas_required=True, mount_point=MOUNT)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret(unique, {"v": "no-cas"}, mount_point=MOUNT)
    kv.create_or_update_secret(unique, {"v": "2"}, cas=1, mount_point=MOUNT)
    assert read(root_client, unique)["data"]["data"] == {"v": "2"}


def test_delete_latest_and_undelete(root_client, unique):
    kv = root_client.secrets.kv.v2
    kv.create_or_update_secret(unique, {"v": "1"}, mount_point=MOUNT)
    kv.create_or_update_secret(unique, {"v": "2"}, mount_point=MOUNT)
    kv.delete_latest_version_of_secret(unique, mount_point=MOUNT)

    with pytest.raises(hvac.exceptions.InvalidPath):
        read(root_client, unique)
    # Without raising, hvac hands back the metadata of the deleted version.
    deleted = kv.read_secret_version(unique, mount_point=MOUNT, raise_on_deleted_version=False)
    assert deleted["data"]["data"] is None
    assert deleted["data"]["metadata"]["version"] == 2
    assert deleted["data"]["metadata"]["deletion_time"] != ""
    assert read(root_client, unique, version=1)["data"]["data"] == {"v": "1"}

    kv.undelete_secret_versions(unique, versions=[2], mount_point=MOUNT)
    restored = read(root_client, unique)
    assert restored["data"]["data"] == {"v": "2"}
    assert restored["data"]["metadata"]["deletion_time"] == ""


def test_delete_specific_versions(root_client, unique):
    kv = root_client.secrets.kv.v2
    for i in range(1, 4):
        kv.create_or_update_secret(unique, {"v": str(i)}, mount_point=MOUNT)
    kv.delete_secret_versions(unique, versions=[1, 2], mount_point=MOUNT)
    for v in (1, 2):
        with pytest.raises(hvac.exceptions.InvalidPath):
            read(root_client, unique, version=v)
    assert read(root_client, unique)["data"]["data"] == {"v": "3"}
    versions = kv.read_secret_metadata(unique, mount_point=MOUNT)["data"]["versions"]
    assert versions["1"]["deletion_time"] != ""
    assert versions["2"]["deletion_time"] != ""
    assert versions["3"]["deletion_time"] == ""


def test_destroy_is_permanent(root_client, unique):
    kv = root_client.secrets.kv.v2
    kv.create_or_update_secret(unique, {"v": "1"}, mount_point=MOUNT)
    kv.create_or_update_secret(unique, {"v": "2"}, mount_point=MOUNT)
    kv.destroy_secret_versions(unique, versions=[1], mount_point=MOUNT)
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(root_client, unique, version=1)
    kv.undelete_secret_versions(unique, versions=[1], mount_point=MOUNT)
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(root_client, unique, version=1)
    meta = kv.read_secret_metadata(unique, mount_point=MOUNT)["data"]
    assert meta["versions"]["1"]["destroyed"] is True
    assert meta["versions"]["2"]["destroyed"] is False
    assert read(root_client, unique)["data"]["data"] == {"v": "2"}


def test_metadata_read(root_client, unique):
    kv = root_client.secrets.kv.v2
    kv.create_or_update_secret(unique, {"v": "1"}, mount_point=MOUNT)
    kv.create_or_update_secret(unique, {"v": "2"}, mount_point=MOUNT)
    meta = kv.read_secret_metadata(unique, mount_point=MOUNT)["data"]
    assert meta["current_version"] == 2
    assert meta["oldest_version"] in (0, 1)
    assert sorted(meta["versions"]) == ["1", "2"]
    assert meta["created_time"] and meta["updated_time"]
    assert meta["cas_required"] is False


def test_metadata_update_max_versions_prunes_old_versions(root_client, unique):
    kv = root_client.secrets.kv.v2
    kv.create_or_update_secret(unique, {"v": "1"}, mount_point=MOUNT)
    kv.update_metadata(
        unique, max_versions=2, custom_metadata={"owner": "team-a"}, mount_point=MOUNT
    )
    meta = kv.read_secret_metadata(unique, mount_point=MOUNT)["data"]
    assert meta["max_versions"] == 2
    assert meta["custom_metadata"] == {"owner": "team-a"}
    for i in range(2, 5):
        kv.create_or_update_secret(unique, {"v": str(i)}, mount_point=MOUNT)
    meta = kv.read_secret_metadata(unique, mount_point=MOUNT)["data"]
    assert meta["current_version"] == 4
    assert sorted(meta["versions"]) == ["3", "4"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(root_client, unique, version=1)
    assert read(root_client, unique, version=3)["data"]["data"] == {"v": "3"}


def test_list_secrets(root_client, unique):
    kv = root_client.secrets.kv.v2
    kv.create_or_update_secret(f"{unique}/app/db", {"v": "1"}, mount_point=MOUNT)
    kv.create_or_update_secret(f"{unique}/app/api", {"v": "1"}, mount_point=MOUNT)
    kv.create_or_update_secret(f"{unique}/app/nested/x", {"v": "1"}, mount_point=MOUNT)
    listed = kv.list_secrets(f"{unique}/app", mount_point=MOUNT)
    assert sorted(listed["data"]["keys"]) == ["api", "db", "nested/"]
    top = kv.list_secrets("", mount_point=MOUNT)
    assert f"{unique}/" in top["data"]["keys"]


def test_delete_metadata_removes_all_versions(root_client, unique):
    kv = root_client.secrets.kv.v2
    kv.create_or_update_secret(f"{unique}/gone", {"v": "1"}, mount_point=MOUNT)
    kv.create_or_update_secret(f"{unique}/gone", {"v": "2"}, mount_point=MOUNT)
    kv.create_or_update_secret(f"{unique}/kept", {"v": "1"}, mount_point=MOUNT)
    kv.delete_metadata_and_all_versions(f"{unique}/gone", mount_point=MOUNT)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_metadata(f"{unique}/gone", mount_point=MOUNT)
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(root_client, f"{unique}/gone", version=1)
    assert kv.list_secrets(unique, mount_point=MOUNT)["data"]["keys"] == ["kept"]
    # A new write starts again at version 1.
    again = kv.create_or_update_secret(f"{unique}/gone", {"v": "new"}, mount_point=MOUNT)
    assert again["data"]["version"] == 1


def test_hvac_patch_merges_into_new_version(root_client, unique):
    kv = root_client.secrets.kv.v2
    kv.create_or_update_secret(unique, {"user": "app", "password": "old"}, mount_point=MOUNT)
    patched = kv.patch(unique, {"password": "new", "port": "5432"}, mount_point=MOUNT)
    assert patched["data"]["version"] == 2
    got = read(root_client, unique)["data"]["data"]
    assert got == {"user": "app", "password": "new", "port": "5432"}


def test_http_patch_merge_patch(root_client, unique):
    """The server-side PATCH (JSON merge patch), as `vault kv patch` sends it."""
    kv = root_client.secrets.kv.v2
    kv.create_or_update_secret(unique, {"a": "1", "b": "2", "c": "3"}, mount_point=MOUNT)
    resp = root_client.adapter.request(
        "PATCH",
        f"/v1/{MOUNT}/data/{unique}",
        json={"data": {"b": "20", "c": None}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp["data"]["version"] == 2
    assert read(root_client, unique)["data"]["data"] == {"a": "1", "b": "20"}


def test_patch_of_missing_secret_fails(root_client, unique):
    with pytest.raises(hvac.exceptions.InvalidPath):
        root_client.secrets.kv.v2.patch(unique, {"a": "1"}, mount_point=MOUNT)
    with pytest.raises(hvac.exceptions.InvalidPath):
        root_client.adapter.request(
            "PATCH",
            f"/v1/{MOUNT}/data/{unique}",
            json={"data": {"a": "1"}},
            headers={"Content-Type": "application/merge-patch+json"},
        )


def test_mount_config_max_versions(root_client, unique):
    root_client.sys.enable_secrets_engine("kv", path=unique, options={"version": "2"})
    kv = root_client.secrets.kv.v2
    kv.configure(max_versions=3, mount_point=unique)
    assert kv.read_configuration(mount_point=unique)["data"]["max_versions"] == 3
    for i in range(1, 6):
        kv.create_or_update_secret("s", {"v": str(i)}, mount_point=unique)
    versions = kv.read_secret_metadata("s", mount_point=unique)["data"]["versions"]
    assert sorted(versions, key=int) == ["3", "4", "5"]
