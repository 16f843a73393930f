"""api.auth: static tokens, noauth headers, keystonemiddleware (with a stand-in filter), and secure defaults."""

from __future__ import annotations

import asyncio

import pytest

from streams.api.auth import KeystoneAuth, NoAuth, TokenAuth, create_authenticator
from streams.api.errors import AodhError
from streams.config import ApiSettings, ConfigError, load_settings

TOKEN = "s3cret-token-for-tests-0001"


def identify(auth, headers):
    return asyncio.run(auth.identify(headers))


def test_default_is_token_auth_and_refuses_to_start_without_a_token():
    settings = ApiSettings()
    assert settings.auth == "token"
    with pytest.raises(ConfigError, match="api.tokens: api.auth is 'token' .* no token is configured"):
        create_authenticator(settings)


def test_tokens_map_to_identities_and_anything_else_is_401():
    auth = create_authenticator(ApiSettings(tokens=[
        {"token": TOKEN, "user_id": "u-1", "project_id": "p-1"},
        {"token": TOKEN + "-admin", "user_id": "u-a", "project_id": "p-a", "roles": ["admin"]}]))
    me = identify(auth, {"X-Auth-Token": TOKEN})
    assert (me.user_id, me.project_id, me.is_admin) == ("u-1", "p-1", False)
    assert identify(auth, {"X-Auth-Token": TOKEN + "-admin"}).is_admin
    for headers in ({}, {"X-Auth-Token": ""}, {"X-Auth-Token": TOKEN[:-1]},
                    {"X-User-Id": "u-1", "X-Project-Id": "p-1", "X-Roles": "admin"}):
        with pytest.raises(AodhError) as exc:
            identify(auth, headers)
        assert exc.value.status == 401


def test_token_settings_are_checked_at_load_and_stay_secret(monkeypatch):
    monkeypatch.setenv("STREAMS_API__TOKENS", '[{"token": "short", "user_id": "u", "project_id": "p"}]')
    with pytest.raises(ConfigError, match="api.tokens.0.token: Value error, must be at least 16 characters"):
        load_settings()
    monkeypatch.setenv("STREAMS_API__TOKENS", f'[{{"token": "{TOKEN}", "user_id": "u", "project_id": "p"}}]')
    assert TOKEN not in repr(load_settings().api)
    with pytest.raises(ValueError, match="same token"):
        ApiSettings(tokens=[{"token": TOKEN, "user_id": "u", "project_id": "p"}] * 2)


def test_noauth_believes_the_headers_python_aodhclient_sends():
    me = identify(NoAuth(), {"X-User-Id": "u", "X-Project-Id": "p", "X-Roles": "member, admin"})
    assert me.roles == ("member", "admin") and me.is_admin
    with pytest.raises(AodhError) as exc:
        identify(NoAuth(), {"X-User-Id": "u"})
    assert exc.value.status == 401
    assert isinstance(create_authenticator(ApiSettings(auth="noauth")), NoAuth)


class FakeAuthToken:
    """Stands in for keystonemiddleware.auth_token: confirms one token, answers 401 to others."""

    def __init__(self, conf):
        self.conf = conf

    def __call__(self, app):
        def middleware(environ, start_response):
            if environ.get("HTTP_X_AUTH_TOKEN") == "keystone-down":
                start_response("503 Service Unavailable", [])
                return [b"Keystone is unreachable"]
            if environ.get("HTTP_X_AUTH_TOKEN") != "keystone-token":
                start_response("401 Unauthorized", [])
                return [b"Authentication required"]
            environ.update(HTTP_X_IDENTITY_STATUS="Confirmed", HTTP_X_USER_ID="ku", HTTP_X_PROJECT_ID="kp",
                           HTTP_X_ROLES="reader,admin")
            return app(environ, start_response)
        return middleware


def test_keystone_identity_is_what_the_middleware_confirmed():
    seen = {}

    def factory(global_conf, **local):
        seen.update(local)
        return FakeAuthToken(local)

    auth = KeystoneAuth({"www_authenticate_uri": "https://keystone/v3", "auth_type": "password"}, factory)
    me = identify(auth, {"X-Auth-Token": "keystone-token", "X-User-Id": "spoofed"})
    assert (me.user_id, me.project_id, me.is_admin) == ("ku", "kp", True)
    assert seen["www_authenticate_uri"] == "https://keystone/v3"
    for headers in ({}, {"X-Auth-Token": "forged"}):
        with pytest.raises(AodhError) as exc:
            identify(auth, headers)
        assert exc.value.status == 401
    with pytest.raises(AodhError) as exc:
        identify(auth, {"X-Auth-Token": "keystone-down"})
    assert exc.value.status == 503 and "Keystone" in exc.value.faultstring


def test_keystone_without_keystonemiddleware_names_the_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_keystonemiddleware(name, *a, **kw):
        if name.startswith("keystonemiddleware"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_keystonemiddleware)
    with pytest.raises(ConfigError, match="pip install keystonemiddleware"):
        create_authenticator(ApiSettings(auth="keystone"))


def test_token_auth_rejects_empty_configuration_directly():
    with pytest.raises(ConfigError):
        TokenAuth([])
