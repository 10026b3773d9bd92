"""Transit secrets engine through hvac's own methods (client.secrets.transit)."""

from __future__ import annotations

import base64

import hvac
import pytest


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def transit(root_client, unique):
    root_client.sys.enable_secrets_engine("transit", path=unique)
    yield unique
    root_client.sys.disable_secrets_engine(unique)


def test_create_encrypt_decrypt_rotate_rewrap(root_client, transit):
    t = root_client.secrets.transit
    t.create_key("app", mount_point=transit)
    key = t.read_key("app", mount_point=transit)["data"]
    assert key["type"] == "aes256-gcm96"
    assert key["latest_version"] == 1
    assert "app" in t.list_keys(mount_point=transit)["data"]["keys"]

    old = t.encrypt_data("app", b64(b"hello hvac"), mount_point=transit)["data"]["ciphertext"]
    assert old.startswith("vault:v1:")
    plain = t.decrypt_data("app", old, mount_point=transit)["data"]["plaintext"]
    assert base64.b64decode(plain) == b"hello hvac"

    t.rotate_key("app", mount_point=transit)
    assert t.read_key("app", mount_point=transit)["data"]["latest_version"] == 2
    new = t.rewrap_data("app", old, mount_point=transit)["data"]["ciphertext"]
    assert new.startswith("vault:v2:")
    assert base64.b64decode(t.decrypt_data("app", new, mount_point=transit)["data"]["plaintext"]) == b"hello hvac"

    t.update_key_configuration("app", min_decryption_version=2, mount_point=transit)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        t.decrypt_data("app", old, mount_point=transit)


def test_batch_and_derived(root_client, transit):
    t = root_client.secrets.transit
    t.create_key("derived", derived=True, mount_point=transit)
    ctx = b64(b"tenant-1")
    batch = [{"plaintext": b64(b"a"), "context": ctx}, {"plaintext": b64(b"b"), "context": ctx}]
    results = t.encrypt_data("derived", batch_input=batch, mount_point=transit)["data"]["batch_results"]
    back = t.decrypt_data(
        "derived",
        batch_input=[{"ciphertext": r["ciphertext"], "context": ctx} for r in results],
        mount_point=transit,
    )["data"]["batch_results"]
    assert [base64.b64decode(r["plaintext"]) for r in back] == [b"a", b"b"]

    # Convergent encryption: the same context and plaintext give the same ciphertext.
    t.create_key("conv", derived=True, convergent_encryption=True, mount_point=transit)
    first = t.encrypt_data("conv", b64(b"x"), context=ctx, mount_point=transit)["data"]["ciphertext"]
    again = t.encrypt_data("conv", b64(b"x"), context=ctx, mount_point=transit)["data"]["ciphertext"]
    assert first == again


def test_sign_verify_and_hmac(root_client, transit):
    t = root_client.secrets.transit
    for key_type in ("ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-2048"):
        t.create_key(key_type, key_type=key_type, mount_point=transit)
        sig = t.sign_data(key_type, hash_input=b64(b"doc"), mount_point=transit)["data"]["signature"]
        ok = t.verify_signed_data(key_type, b64(b"doc"), signature=sig, mount_point=transit)
        assert ok["data"]["valid"] is True
        bad = t.verify_signed_data(key_type, b64(b"other"), signature=sig, mount_point=transit)
        assert bad["data"]["valid"] is False

    # hvac 2.4's create_key refuses key_type="hmac" itself; an AES key's HMAC key serves.
    t.create_key("mac", mount_point=transit)
    mac = t.generate_hmac("mac", b64(b"msg"), algorithm="sha2-384", mount_point=transit)["data"]["hmac"]
    ok = t.verify_signed_data("mac", b64(b"msg"), hmac=mac, hash_algorithm="sha2-384", mount_point=transit)
    assert ok["data"]["valid"] is True


def test_delete_needs_deletion_allowed(root_client, transit):
    t = root_client.secrets.transit
    t.create_key("gone", mount_point=transit)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        t.delete_key("gone", mount_point=transit)
    t.update_key_configuration("gone", deletion_allowed=True, mount_point=transit)
    t.delete_key("gone", mount_point=transit)
    with pytest.raises(hvac.exceptions.InvalidPath):
        t.read_key("gone", mount_point=transit)
