"""Who a request acts as (``api.auth``): ``token`` (default), ``keystone`` or ``noauth``.

* ``token``: the request's ``X-Auth-Token`` must equal one of ``api.tokens``
  (compared in constant time, every entry checked); the request acts as that
  entry's user, project and roles. ``streams api`` refuses to start without a
  token.
* ``keystone``: keystonemiddleware's ``auth_token`` (``pip install
  'streams-metering[keystone]'``) validates ``X-Auth-Token`` with Keystone, configured by
  ``api.keystone`` (its paste options: ``www_authenticate_uri``, ``auth_url``,
  ``auth_type``, ``username``, ``password``, ``project_name``,
  ``user_domain_name``, ``project_domain_name``, ...). The middleware is a WSGI
  filter: each request's token is passed through it in a worker thread and
  the identity it confirms (``X-User-Id``, ``X-Project-Id``, ``X-Roles``) is
  used; what the client sent in those headers is never trusted. Not tested
  here (no Keystone on these machines).
* ``noauth``: Aodh's no-auth mode, for loopback and tests: the client's
  ``X-User-Id``, ``X-Project-Id`` and ``X-Roles`` headers are believed
  (python-aodhclient's ``aodh-noauth`` plugin sends them; its default role is
  ``admin``).

Every failure is 401 with Aodh's error body; nothing about the configured
tokens is logged or echoed.
"""

from __future__ import annotations

import abc
import asyncio
import hmac
import io
from collections.abc import Callable, Mapping
from typing import Any

from streams.api.errors import AodhError
from streams.api.mapping import Identity
from streams.config import ApiSettings, ConfigError

AUTH_REQUIRED = "The request you have made requires authentication."
"""keystonemiddleware's 401 message."""


def _roles(value: str | None) -> tuple[str, ...]:
    return tuple(r.strip() for r in (value or "").split(",") if r.strip())


class Authenticator(abc.ABC):
    """Maps a request's headers to an :class:`~streams.api.mapping.Identity`."""

    @abc.abstractmethod
    async def identify(self, headers: Mapping[str, str]) -> Identity:
        """The caller's identity.

        Raises:
            AodhError: 401, unauthenticated.
        """


class NoAuth(Authenticator):
    """Aodh's noauth: X-User-Id, X-Project-Id and X-Roles are taken as given (both ids required)."""

    async def identify(self, headers: Mapping[str, str]) -> Identity:
        user, project = headers.get("X-User-Id"), headers.get("X-Project-Id")
        if not user or not project:
            raise AodhError(f"{AUTH_REQUIRED} (api.auth noauth: send X-User-Id and X-Project-Id)", 401)
        return Identity(user, project, _roles(headers.get("X-Roles")))


class TokenAuth(Authenticator):
    """Static tokens (``api.tokens``)."""

    def __init__(self, tokens: list[Any]) -> None:
        if not tokens:
            raise ConfigError("api.tokens: api.auth is 'token' (the default) but no token is configured; set "
                              "api.tokens (e.g. STREAMS_API__TOKENS='[{\"token\": \"<16+ random characters>\", "
                              "\"user_id\": \"...\", \"project_id\": \"...\", \"roles\": [\"admin\"]}]') or choose "
                              "api.auth keystone, or noauth explicitly for loopback use")
        self._entries = [(t.token.get_secret_value().encode(), Identity(t.user_id, t.project_id, tuple(t.roles)))
                         for t in tokens]

    async def identify(self, headers: Mapping[str, str]) -> Identity:
        given = (headers.get("X-Auth-Token") or "").encode()
        found = None
        for secret, identity in self._entries:  # every entry compared: time does not tell which matched
            if hmac.compare_digest(secret, given) and found is None:
                found = identity
        if found is None or not given:
            raise AodhError(AUTH_REQUIRED, 401)
        return found


class KeystoneAuth(Authenticator):
    """keystonemiddleware's auth_token around a WSGI app that records the identity it confirmed.

    Args:
        options: the middleware's paste options (``api.keystone``).
        filter_factory: ``keystonemiddleware.auth_token.filter_factory`` (injectable for tests).
    """

    def __init__(self, options: Mapping[str, str], filter_factory: Callable | None = None) -> None:
        if filter_factory is None:
            try:
                from keystonemiddleware import auth_token
            except ImportError:
                raise ConfigError("api.auth: keystone needs keystonemiddleware: pip install keystonemiddleware "
                                  "(or pip install 'streams-metering[keystone]')") \
                    from None
            filter_factory = auth_token.filter_factory
        self._middleware = filter_factory({}, **dict(options))(self._confirmed)

    @staticmethod
    def _confirmed(environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        environ["streams.identity"] = Identity(environ.get("HTTP_X_USER_ID"), environ.get("HTTP_X_PROJECT_ID"),
                                               _roles(environ.get("HTTP_X_ROLES")))
        start_response("204 No Content", [])
        return []

    def check(self, token: str, service_token: str | None = None) -> Identity:
        """Validate ``token`` through the middleware (blocking: it may call Keystone)."""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET", "PATH_INFO": "/v2", "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "streams-api", "SERVER_PORT": "8042", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(),
            "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "HTTP_X_AUTH_TOKEN": token,
        }
        if service_token:
            environ["HTTP_X_SERVICE_TOKEN"] = service_token
        status: list[str] = []
        b"".join(self._middleware(environ, lambda s, h, exc_info=None: status.append(s)))
        identity = environ.get("streams.identity")
        if status and status[0].startswith("5"):
            raise AodhError(f"identity service (Keystone) unavailable: auth_token answered {status[0]}", 503)
        if identity is None or not status or not status[0].startswith("2") \
                or environ.get("HTTP_X_IDENTITY_STATUS", "Confirmed") != "Confirmed":
            raise AodhError(AUTH_REQUIRED, 401)
        return identity

    async def identify(self, headers: Mapping[str, str]) -> Identity:
        token = headers.get("X-Auth-Token")
        if not token:
            raise AodhError(AUTH_REQUIRED, 401)
        return await asyncio.to_thread(self.check, token, headers.get("X-Service-Token"))


def create_authenticator(settings: ApiSettings) -> Authenticator:
    """The authenticator ``api.auth`` names.

    Raises:
        ConfigError: ``token`` without ``api.tokens``, or ``keystone`` without keystonemiddleware.
    """
    if settings.auth == "noauth":
        return NoAuth()
    if settings.auth == "keystone":
        return KeystoneAuth({k: v.get_secret_value() for k, v in settings.keystone.items()})
    return TokenAuth(settings.tokens)
