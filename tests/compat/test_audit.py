"""File audit device: JSON lines with HMAC-ed values and no plaintext secrets."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def audit_file(root_client, tmp_path, unique):
    path = tmp_path / "audit.log"
    device = f"file-{unique}"
    root_client.sys.enable_audit_device(
        "file", path=device, options={"file_path": str(path)}
    )
    yield device, path
    root_client.sys.disable_audit_device(device)


def audit_entries(path):
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines, "audit log is empty"
    return [json.loads(line) for line in lines]


def test_audit_device_is_listed(root_client, audit_file):
    device, path = audit_file
    devices = root_client.sys.list_enabled_audit_devices()["data"]
    assert devices[f"{device}/"]["type"] == "file"
    assert devices[f"{device}/"]["options"]["file_path"] == str(path)


def test_audit_log_hashes_secrets(bunker, root_client, audit_file, unique):
    device, path = audit_file
    plaintext = f"plaintext-{unique}-do-not-log"
    root_client.secrets.kv.v2.create_or_update_secret(
        unique, {"password": plaintext}, mount_point="secret"
    )
    got = root_client.secrets.kv.v2.read_secret_version(
        unique, mount_point="secret", raise_on_deleted_version=True
    )
    assert got["data"]["data"]["password"] == plaintext

    text = path.read_text()
    assert plaintext not in text, "secret value written to the audit log in plaintext"
    assert bunker.root_token not in text, "client token written to the audit log in plaintext"
    assert "hmac-sha256:" in text

    entries = audit_entries(path)
    ours = [e for e in entries if e.get("request", {}).get("path") == f"secret/data/{unique}"]
    ops = [(e["type"], e["request"]["operation"]) for e in ours]
    assert ("request", "update") in ops or ("request", "create") in ops
    assert ("response", "read") in ops
    for e in ours:
        assert e["time"]
        assert e["request"]["id"]
        assert e["auth"]["client_token"].startswith("hmac-sha256:")
        assert e["auth"]["policies"] == ["root"]
    write_req = next(e for e in ours if e["type"] == "request" and e["request"]["operation"] != "read")
    assert write_req["request"]["data"]["data"]["password"].startswith("hmac-sha256:")
    read_resp = next(e for e in ours if e["type"] == "response" and e["request"]["operation"] == "read")
    hashed = read_resp["response"]["data"]["data"]["password"]
    assert hashed.startswith("hmac-sha256:")

    # The audit-hash endpoint lets an operator find a known value in the log.
    expected = root_client.sys.calculate_hash(device, plaintext)["data"]["hash"]
    assert expected == hashed


def test_every_audit_line_is_a_request_or_response_entry(root_client, audit_file):
    """Log pipelines that parse Vault audit logs switch on `type` and read `request.path`.
    Vault's probe line written when a device is enabled is itself a request entry (an
    update of sys/audit/test), so every line has that shape."""
    _device, path = audit_file
    root_client.auth.token.lookup_self()
    entries = audit_entries(path)
    for e in entries:
        assert e["type"] in ("request", "response"), e
        assert e["time"], e
        assert e["request"]["path"], e
        assert e["request"]["operation"], e


def test_disabled_audit_device_stops_logging(root_client, tmp_path, unique):
    path = tmp_path / "stopped.log"
    device = f"stop-{unique}"
    root_client.sys.enable_audit_device("file", path=device, options={"file_path": str(path)})
    root_client.auth.token.lookup_self()
    root_client.sys.disable_audit_device(device)
    size = path.stat().st_size
    assert size > 0
    root_client.secrets.kv.v2.create_or_update_secret(unique, {"v": "1"}, mount_point="secret")
    assert path.stat().st_size == size
    assert f"{device}/" not in root_client.sys.list_enabled_audit_devices()["data"]
