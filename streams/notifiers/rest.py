"""``http(s)://``: POST the alarm as JSON, as Aodh's REST notifier does (``aodh/notifier/rest.py``).

Body (Aodh's shape plus ``id``, ``resource_id``, ``timestamp``)::

    {"alarm_name": ..., "alarm_id": ..., "severity": ..., "previous": "ok",
     "current": "alarm", "reason": "...", "reason_data": {...},
     "id": "<event_id>", "resource_id": ..., "timestamp": "2026-11-22T03:48:41.000000+00:00"}

Headers: ``Content-Type: application/json``, ``X-Streams-Event-Id: <event_id>``
(the same on every retry and redelivery: receivers de-duplicate on it), and
Aodh's ``X-OpenStack-Request-Id: req-<uuid>``.

TLS certificates are verified unless ``notifier.verify_tls`` is false or the
URL carries ``streams-ssl-verify=0`` (Aodh: ``aodh-alarm-ssl-verify``);
``notifier.ca_file`` adds a CA bundle. 2xx is success; 408, 429 and 5xx and
network errors are retried; other statuses are not.

Where a webhook may send the alarm (an alarm definition names any URL, so
this is the notifier's guard against being pointed at internal services):

* redirects are not followed (a 3xx is a failure that is not retried):
  a 307 would otherwise re-send the body to a host nobody configured;
* hosts outside ``notifier.allowed_hosts`` (names, ``*.suffix`` wildcards or
  networks; empty = any) are refused;
* addresses in ``notifier.denied_networks`` (by default link-local
  169.254.0.0/16, which holds the cloud metadata service, and AWS's IPv6
  metadata address fd00:ec2::254) are refused, whether the URL names them or
  a host name resolves to them (checked on the addresses actually connected to).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import socket
import ssl
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from streams.config import NotifierSettings
from streams.notifiers.base import NotificationError, Notifier
from streams.redact import redact_url

VERIFY_PARAM = "streams-ssl-verify"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HostPolicy:
    """``notifier.allowed_hosts`` and ``notifier.denied_networks`` as checks.

    Args:
        settings: the notifier settings.
    """

    def __init__(self, settings: NotifierSettings) -> None:
        self.denied: list[Network] = [ipaddress.ip_network(n, strict=False) for n in settings.denied_networks]
        self.allowed_names: list[str] = []
        self.allowed_networks: list[Network] = []
        for entry in settings.allowed_hosts:
            try:
                self.allowed_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.allowed_names.append(entry.lower())

    def check_host(self, host: str) -> None:
        """Raise :class:`NotificationError` (not retryable) unless ``host`` (name or address) may be called."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if self.allowed_names or self.allowed_networks:
            if address is not None:
                ok = any(address in n for n in self.allowed_networks)
            else:
                ok = any(fnmatch.fnmatchcase(host.lower(), pattern) for pattern in self.allowed_names)
            if not ok:
                raise NotificationError(f"host {host!r} is not in notifier.allowed_hosts", retryable=False)
        if address is not None:
            self.check_address(address)

    def check_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        """Raise :class:`NotificationError` (not retryable) if ``address`` is in a denied network."""
        mapped = getattr(address, "ipv4_mapped", None)
        for candidate in (address, mapped):
            if candidate is not None and any(candidate in n for n in self.denied if n.version == candidate.version):
                raise NotificationError(f"address {address} is in notifier.denied_networks", retryable=False)


class _GuardedResolver(AbstractResolver):
    """Resolves as aiohttp does, then refuses denied addresses (so a name cannot smuggle one in)."""

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy
        self.inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        infos = await self.inner.resolve(host, port, family)
        for info in infos:
            self.policy.check_address(ipaddress.ip_address(info["host"]))
        return infos

    async def close(self) -> None:
        await self.inner.close()


class RestNotifier(Notifier):
    """POSTs payloads with one shared aiohttp session (no redirects; allowed hosts only)."""

    _session: aiohttp.ClientSession | None = None

    def __init__(self, settings: NotifierSettings) -> None:
        super().__init__(settings)
        self.policy = HostPolicy(settings)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=_GuardedResolver(self.policy))
            self._session = aiohttp.ClientSession(connector=connector,
                                                  timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        return self._session

    def _ssl(self, verify: bool) -> ssl.SSLContext | bool:
        if not verify:
            return False
        ctx = ssl.create_default_context(cafile=self.settings.ca_file) if self.settings.ca_file else True
        return ctx

    async def notify(self, url: str, payload: dict[str, Any]) -> None:
        parts = urlsplit(url)
        shown = redact_url(url)
        self.policy.check_host(parts.hostname or "")
        query = parse_qs(parts.query)
        verify = self.settings.verify_tls
        if VERIFY_PARAM in query:
            verify = query.pop(VERIFY_PARAM)[-1] not in ("0", "false", "no")
            url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        headers = {"Content-Type": "application/json", "X-Streams-Event-Id": str(payload.get("id", "")),
                   "X-OpenStack-Request-Id": f"req-{uuid.uuid4()}"}
        try:
            async with self._client().post(url, data=json.dumps(payload), headers=headers, allow_redirects=False,
                                           ssl=self._ssl(verify) if parts.scheme == "https" else None) as r:
                if 200 <= r.status < 300:
                    return
                if 300 <= r.status < 400:
                    raise NotificationError(f"{shown} answered HTTP {r.status} (a redirect: not followed)",
                                            retryable=False)
                retryable = r.status in (408, 429) or r.status >= 500
                raise NotificationError(f"{shown} answered HTTP {r.status}", retryable=retryable)
        except NotificationError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, NotificationError) else None
            if cause is None and isinstance(getattr(exc, "os_error", None), NotificationError):
                cause = exc.os_error
            if cause is not None:
                raise cause from None
            raise NotificationError(f"{shown}: {type(exc).__name__}: {redact_url(str(exc))}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
