"""The notifier interface: deliver one alarm payload to one action URL."""

from __future__ import annotations

import abc
from typing import Any

from streams.config import NotifierSettings


class NotificationError(Exception):
    """Delivery failed. ``retryable`` False means retrying cannot help (e.g. HTTP 400)."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Notifier(abc.ABC):
    """Delivers alarm payloads for one URL scheme.

    Args:
        settings: the notifier settings (timeouts, TLS).
    """

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    async def notify(self, url: str, payload: dict[str, Any]) -> None:
        """Deliver ``payload`` (Aodh's notification body, see :func:`streams.notifiers.service.payload_for`)
        to ``url`` once.

        Raises:
            NotificationError: this attempt failed (the service retries with backoff
                if ``retryable``, then dead-letters).
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (called once at shutdown)."""
        return None
