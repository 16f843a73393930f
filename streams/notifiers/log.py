"""``log://[level]``: log the alarm payload (Aodh's LogAlarmNotifier)."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

from streams.notifiers.base import Notifier

log = logging.getLogger("streams.alarms.notify")


class LogNotifier(Notifier):
    """Logs one line per notification at the URL's level (``log://warning``; default info)."""

    async def notify(self, url: str, payload: dict[str, Any]) -> None:
        level = logging.getLevelName((urlsplit(url).netloc or "info").upper())
        log.log(level if isinstance(level, int) else logging.INFO,
                "alarm %(alarm_name)s (%(alarm_id)s) on %(resource_id)s: %(previous)s -> %(current)s: %(reason)s",
                payload, extra={"alarm": json.dumps(payload, sort_keys=True)})
