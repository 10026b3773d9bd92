"""Auth methods through hvac's own methods: enabling, tuning and listing them, and userpass and
AppRole logins."""

from __future__ import annotations

import hvac
import pytest


def test_enable_list_tune_disable_auth_method(root_client, unique):
    root_client.sys.enable_auth_method("userpass", path=unique, description="people")
    methods = root_client.sys.list_auth_methods()
    assert methods["data"][f"{unique}/"]["type"] == "userpass"
    assert methods["data"]["token/"]["type"] == "token"
    root_client.sys.tune_auth_method(unique, default_lease_ttl="1h", max_lease_ttl="2h")
    tuning = root_client.sys.read_auth_method_tuning(unique)["data"]
    assert tuning["default_lease_ttl"] == 3600
    assert tuning["max_lease_ttl"] == 7200
    root_client.sys.disable_auth_method(unique)
    assert f"{unique}/" not in root_client.sys.list_auth_methods()["data"]


def test_userpass_login(bunker, root_client, unique):
    root_client.sys.enable_auth_method("userpass", path=unique)
    root_client.auth.userpass.create_or_update_user(
        "ann", password="s3cret", policies=["default"], token_ttl="10m", mount_point=unique
    )
    assert root_client.auth.userpass.list_user(mount_point=unique)["data"]["keys"] == ["ann"]
    assert root_client.auth.userpass.read_user("ann", mount_point=unique)["data"]["token_ttl"] == 600

    client = bunker.client()
    login = client.auth.userpass.login("ann", "s3cret", mount_point=unique)
    assert login["auth"]["lease_duration"] == 600
    assert login["auth"]["metadata"]["username"] == "ann"
    assert client.is_authenticated()
    assert client.auth.token.lookup_self()["data"]["display_name"] == f"{unique}-ann"

    with pytest.raises(hvac.exceptions.InvalidRequest):
        bunker.client().auth.userpass.login("ann", "wrong", mount_point=unique)
    root_client.auth.userpass.update_password_on_user("ann", "new", mount_point=unique)
    bunker.client().auth.userpass.login("ann", "new", mount_point=unique)
    root_client.auth.userpass.delete_user("ann", mount_point=unique)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        bunker.client().auth.userpass.login("ann", "new", mount_point=unique)


def test_approle_login(bunker, root_client, unique):
    root_client.sys.enable_auth_method("approle", path=unique)
    root_client.auth.approle.create_or_update_approle(
        "web", token_policies=["default"], secret_id_num_uses=1, token_ttl="5m", mount_point=unique
    )
    assert root_client.auth.approle.list_roles(mount_point=unique)["data"]["keys"] == ["web"]
    role_id = root_client.auth.approle.read_role_id("web", mount_point=unique)["data"]["role_id"]
    generated = root_client.auth.approle.generate_secret_id(
        "web", metadata={"team": "a"}, mount_point=unique
    )["data"]
    accessors = root_client.auth.approle.list_secret_id_accessors("web", mount_point=unique)
    assert accessors["data"]["keys"] == [generated["secret_id_accessor"]]
    looked = root_client.auth.approle.read_secret_id(
        "web", generated["secret_id"], mount_point=unique
    )["data"]
    assert looked["metadata"] == {"team": "a"}

    client = bunker.client()
    login = client.auth.approle.login(role_id, generated["secret_id"], mount_point=unique)
    assert login["auth"]["lease_duration"] == 300
    assert login["auth"]["metadata"]["role_name"] == "web"
    assert client.is_authenticated()
    with pytest.raises(hvac.exceptions.InvalidRequest):
        bunker.client().auth.approle.login(role_id, generated["secret_id"], mount_point=unique)

    # The usual delivery: a response-wrapped secret id, unwrapped by the application.
    wrapped = root_client.auth.approle.generate_secret_id("web", mount_point=unique, wrap_ttl="2m")
    unwrapper = bunker.client(token=wrapped["wrap_info"]["token"])
    secret_id = unwrapper.sys.unwrap()["data"]["secret_id"]
    app = bunker.client()
    app.auth.approle.login(role_id, secret_id, mount_point=unique)
    assert app.is_authenticated()

    custom = root_client.auth.approle.create_custom_secret_id("web", "my-id", mount_point=unique)
    root_client.auth.approle.destroy_secret_id_accessor(
        "web", custom["data"]["secret_id_accessor"], mount_point=unique
    )
    with pytest.raises(hvac.exceptions.InvalidRequest):
        bunker.client().auth.approle.login(role_id, "my-id", mount_point=unique)
