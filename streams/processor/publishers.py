"""Publishers of a pipeline's sinks, chosen by URL scheme (Ceilometer's ``get_publisher``).

Each publisher has two methods, and one contract: :meth:`Publisher.add`
buffers samples; :meth:`Publisher.flush` makes them durable and raises if it
cannot. The processor calls ``flush`` (in a worker thread) for every
publisher before it acknowledges the Kafka records the samples came from, so
if ``flush`` fails nothing of the batch is acknowledged and Kafka redelivers it.
One exception is not a failure of the batch: :class:`RecordsRejected`, raised
once everything else is durable, names the records the destination refused
for their data; the processor dead-letters those and acknowledges the batch.

Built-ins, registered as entry points in the ``streams.publishers`` group:

* ``clickhouse://`` — the configured ClickHouse store (settings ``clickhouse.url``);
* ``kafka://<topic>`` — re-publish as signed SampleBatch records, keyed by resource_id;
* ``log://[level]`` — log each sample (debugging; nothing durable).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from streams.codec import BatchCodec, Sample
from streams.config import ConfigError, Settings
from streams.publisher import KafkaPublisher
from streams.storage import open_sink
from streams.storage.clickhouse import RecordsRejected

__all__ = ["Publisher", "RecordsRejected", "open_publisher"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "streams.publishers"


class Publisher(abc.ABC):
    """Buffers samples and makes them durable on :meth:`flush`."""

    @abc.abstractmethod
    def add(self, samples: Sequence[Sample], maybe_stored: bool = True,
            origins: Sequence[int] | None = None) -> None:
        """Buffer ``samples`` (the processor's batch for this publisher).

        ``maybe_stored`` is False when the processor knows the samples were never
        handed to this publisher before (no replay); publishers that skip
        duplicates can then save the lookup. Others ignore it. ``origins``
        gives, per sample, the id of the record it came from, for
        :class:`RecordsRejected`; publishers that never reject records ignore it.
        """

    @abc.abstractmethod
    def flush(self) -> int:
        """Make everything added durable; raise if that is impossible.

        Returns:
            samples skipped because they were already stored (0 if the
            publisher does not check).

        Raises:
            RecordsRejected: everything else is durable; these records (by origin)
                were refused for their data and go to the dead-letter topic.
            Exception: anything else fails the batch (nothing is acknowledged).
        """


class ClickHousePublisher(Publisher):
    """``clickhouse://``: the sink of :mod:`streams.storage.clickhouse`, retrying while the server is away."""

    def __init__(self, url: str, settings: Settings, codec: BatchCodec) -> None:
        self.sink = open_sink(settings, retry_for=float("inf"))

    def add(self, samples: Sequence[Sample], maybe_stored: bool = True,
            origins: Sequence[int] | None = None) -> None:
        self.sink.add(samples, maybe_stored, origins)

    def add_columns(self, columns, rows: Sequence[int], maybe_stored: bool = True,
                    origins: Sequence[int] | None = None) -> None:
        """:meth:`add` for rows of a :class:`~streams.columns.SampleColumns` (no dict per sample)."""
        self.sink.add_columns(columns, rows, maybe_stored, origins)

    def flush(self) -> int:
        self.sink.flush()
        return self.sink.last_duplicates


class KafkaRepublisher(Publisher):
    """``kafka://<topic>``: derived samples as signed records on another topic.

    Raises on :meth:`flush` if any record was not acknowledged by the broker.
    """

    def __init__(self, url: str, settings: Settings, codec: BatchCodec) -> None:
        parts = urlsplit(url)
        topic = parts.netloc or parts.path.strip("/")
        self.publisher = KafkaPublisher(settings.kafka, codec, topic)

    def add(self, samples: Sequence[Sample], maybe_stored: bool = True,
            origins: Sequence[int] | None = None) -> None:
        self.publisher.publish(samples)

    def flush(self) -> int:
        failed_before = self.publisher.failed
        if self.publisher.flush(60) or self.publisher.failed != failed_before:
            raise RuntimeError(f"kafka publisher to {self.publisher.topic}: records not acknowledged")
        return 0


class LogPublisher(Publisher):
    """``log://[level]``: one log line per sample (default level INFO)."""

    def __init__(self, url: str, settings: Settings, codec: BatchCodec) -> None:
        level = (urlsplit(url).netloc or "info").upper()
        self.level = logging.getLevelName(level)
        if not isinstance(self.level, int):
            raise ConfigError(f"publisher {url!r}: unknown log level {level!r}")

    def add(self, samples: Sequence[Sample], maybe_stored: bool = True,
            origins: Sequence[int] | None = None) -> None:
        for s in samples:
            log.log(self.level, "sample %s %s=%s %s at %d", s["resource_id"], s["name"], s["volume"], s["unit"],
                    s["timestamp"])

    def flush(self) -> int:
        return 0


def open_publisher(url: str, settings: Settings, codec: BatchCodec) -> Publisher:
    """Instantiate the publisher registered for ``url``'s scheme.

    Raises:
        ConfigError: no publisher is registered for the scheme.
    """
    scheme = urlsplit(url).scheme
    found = entry_points(group=ENTRY_POINT_GROUP, name=scheme)
    if not found:
        builtin = {"clickhouse": ClickHousePublisher, "kafka": KafkaRepublisher, "log": LogPublisher}.get(scheme)
        if builtin is None:
            raise ConfigError(f"no publisher for scheme {scheme!r} (url {url!r})")
        return builtin(url, settings, codec)
    return next(iter(found)).load()(url, settings, codec)
