"""Keeping secrets out of logs, metrics and headers.

URLs of alarm actions may carry credentials (``https://bot:s3cr3t@hooks.example/x?sig=...``).
They are stored as given (the notifier needs them), but every place that
*shows* one (a log line, a metric label, a dead-letter header) shows
:func:`redact_url` of it instead.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` without its secrets: userinfo becomes ``***@`` and a query string ``?***``; a fragment is dropped.

    >>> redact_url("https://bot:s3cr3t@hooks.example:8443/alarm?sig=abc#x")
    'https://***@hooks.example:8443/alarm?***'

    Text that is not a URL with a scheme and host is returned with everything after
    its first ``?`` or ``@`` hidden, so nothing secret-looking passes either way.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or not parts.scheme or not host:
        cut = min((i for i in (url.find("?"), url.find("@")) if i >= 0), default=-1)
        return url if cut < 0 else url[:cut] + REDACTED
    netloc = host if ":" not in host else f"[{host}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"{REDACTED}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, REDACTED if parts.query else "", ""))
