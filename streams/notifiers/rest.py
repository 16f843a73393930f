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
"""

from __future__ import annotations

import json
import ssl
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp

from streams.notifiers.base import NotificationError, Notifier

VERIFY_PARAM = "streams-ssl-verify"


class RestNotifier(Notifier):
    """POSTs payloads with one shared aiohttp session."""

    _session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        return self._session

    def _ssl(self, verify: bool) -> ssl.SSLContext | bool:
        if not verify:
            return False
        ctx = ssl.create_default_context(cafile=self.settings.ca_file) if self.settings.ca_file else True
        return ctx

    async def notify(self, url: str, payload: dict[str, Any]) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        verify = self.settings.verify_tls
        if VERIFY_PARAM in query:
            verify = query.pop(VERIFY_PARAM)[-1] not in ("0", "false", "no")
            url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        headers = {"Content-Type": "application/json", "X-Streams-Event-Id": str(payload.get("id", "")),
                   "X-OpenStack-Request-Id": f"req-{uuid.uuid4()}"}
        try:
            async with self._client().post(url, data=json.dumps(payload), headers=headers,
                                           ssl=self._ssl(verify) if parts.scheme == "https" else None) as r:
                if 200 <= r.status < 300:
                    return
                retryable = r.status in (408, 429) or r.status >= 500
                raise NotificationError(f"{url} answered HTTP {r.status}", retryable=retryable)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise NotificationError(f"{url}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
