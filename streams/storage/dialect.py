"""ClickHouse versions and what their SQL dialect can express: types, codecs, TTL.

:class:`ServerVersion` parses ``SELECT version()``; :class:`Dialect` picks column
types, codecs and TTL for one version (table by table in :mod:`streams.storage.schema`);
:func:`quote_ident` guards every identifier that goes into SQL. No DDL and no I/O
here, so the backend, the schema and the queries all import it without a cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ServerVersion:
    """A ClickHouse version, e.g. ``ServerVersion(18, 16)``."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> ServerVersion:
        """Parse ``SELECT version()`` output such as ``18.16.1`` or ``26.9.1.1``.

        Raises:
            ValueError: not a dotted version.
        """
        m = re.match(r"^(\d+)\.(\d+)", text.strip())
        if not m:
            raise ValueError(f"unrecognised ClickHouse version {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def has_datetime64(self) -> bool:
        """DateTime64 arrived in ClickHouse 20.1."""
        return (self.major, self.minor) >= (20, 1)

    @property
    def has_low_cardinality(self) -> bool:
        """LowCardinality is usable without experimental settings from 19.0."""
        return self.major >= 19

    @property
    def has_codecs(self) -> bool:
        """Column codecs arrived in 19.1 (Delta, ZSTD); Gorilla and DoubleDelta in 19.3."""
        return (self.major, self.minor) >= (19, 3)

    @property
    def has_ttl(self) -> bool:
        """Table TTL arrived in 19.6."""
        return (self.major, self.minor) >= (19, 6)

    @property
    def has_sql_users(self) -> bool:
        """``CREATE USER`` (SQL-driven access control) arrived in 20.4; before, users live in users.xml."""
        return (self.major, self.minor) >= (20, 4)


def quote_ident(name: str) -> str:
    """Return ``name`` if it is a plain identifier.

    Raises:
        ValueError: anything else (we never build DDL from arbitrary text).
    """
    if not _IDENT.match(name):
        raise ValueError(f"invalid ClickHouse identifier {name!r}")
    return name


@dataclass(frozen=True)
class Dialect:
    """Type, codec and TTL choices for one server version.

    Args:
        version: the server's version.
        retention_days: raw data and 1-minute rollups older than this are
            deleted by TTL where the server has TTL; 0 keeps everything.
    """

    version: ServerVersion
    retention_days: int = 0

    @property
    def lc(self) -> str:
        return "LowCardinality(String)" if self.version.has_low_cardinality else "String"

    def codec(self, spec: str) -> str:
        """`` CODEC(spec)`` on servers with codecs, else nothing."""
        return f" CODEC({spec})" if self.version.has_codecs else ""

    def ts_expr(self, column: str = "timestamp_us") -> str:
        """Expression converting microseconds in ``column`` to this version's time type."""
        if self.version.has_datetime64:
            return f"fromUnixTimestamp64Micro({column}, 'UTC')"
        return f"toDateTime(intDiv({column}, 1000000), 'UTC')"

    def ts_from_us(self, column: str = "timestamp_us") -> str:
        """Type and DEFAULT of a time column derived from microseconds in ``column``."""
        kind = "DateTime64(6, 'UTC')" if self.version.has_datetime64 else "DateTime('UTC')"
        return f"{kind} DEFAULT {self.ts_expr(column)}"

    def ttl(self, column: str, days: int | None = None) -> str:
        """A TTL clause on ``column`` (a DateTime), or nothing (no TTL support, or keep forever)."""
        days = self.retention_days if days is None else days
        if not days or not self.version.has_ttl:
            return ""
        return f"\nTTL toDateTime({column}) + INTERVAL {int(days)} DAY"
