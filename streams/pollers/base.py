"""Pollster and discovery plugin interfaces (Ceilometer's polling vocabulary).

A :class:`Discovery` finds the resources to poll; a :class:`Pollster`
measures them and returns samples. Both are small and synchronous: the
polling service runs them in a worker thread, so blocking calls (psutil,
``/proc``) are fine.
"""

from __future__ import annotations

import abc
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.codec import Sample, metadata_to_strings


@dataclass(frozen=True)
class Meter:
    """What a pollster measures: name, sample type and unit (e.g. ``cpu``, cumulative, ns)."""

    name: str
    type: str
    unit: str


@dataclass
class Resource:
    """Something measured: an id (the Kafka key) and free-form metadata.

    ``handle`` is whatever the discovery found the resource through (e.g. a
    psutil snapshot), so a pollster need not look it up again.
    """

    id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    project_id: str | None = None
    handle: Any = field(default=None, repr=False, compare=False)


class Discovery(abc.ABC):
    """Finds the resources a pollster should measure.

    Registered under the ``streams.discovery`` entry-point group and built
    with the source's static resources and parameters:
    ``Discovery(resources=[...], **params)``; most discoveries ignore both.
    """

    def __init__(self, resources: Iterable[Resource] = (), **params: Any) -> None:
        self.resources = list(resources)
        self.params = params

    @abc.abstractmethod
    def discover(self) -> list[Resource]:
        """Return the resources visible now. Called once per poll."""


class Pollster(abc.ABC):
    """Measures resources and returns samples of its declared meters.

    Registered under ``streams.pollsters.<agent>`` (``compute`` or ``central``)
    and built as ``Pollster(source=..., **params)``, ``params`` being the
    pollster's section of polling.yaml. A pollster whose meters come from its
    parameters (e.g. the Prometheus scraper) sets ``meters`` per instance.

    Attributes:
        meters: what it can measure; polling.yaml may only name these.
        default_discovery: name of the discovery plugin used when the source
            names neither static resources nor a discovery.
    """

    meters: tuple[Meter, ...] = ()
    default_discovery: str = "static"

    def __init__(self, source: str = "streams", **params: Any) -> None:
        self.source = source
        self.params = params

    @abc.abstractmethod
    def get_samples(self, resources: Iterable[Resource]) -> Iterable[Sample]:
        """Measure ``resources``; return samples (possibly none, e.g. on a first poll).

        A resource that vanished meanwhile is skipped, not an error.
        """


def make_sample(
    meter: Meter,
    volume: float,
    resource: Resource,
    *,
    timestamp_us: int | None = None,
    monotonic_time: float | None = None,
    source: str = "streams",
    metadata: Mapping[str, str] | None = None,
) -> Sample:
    """Build one sample dict of ``meter`` for ``resource``.

    Args:
        volume: the value, in ``meter.unit``.
        timestamp_us: measurement time, microseconds since the epoch (default: now).
        monotonic_time: poller's monotonic clock (s) at measurement.
        metadata: pre-flattened string metadata (default: ``resource.metadata`` flattened).
    """
    return {
        "message_id": str(uuid.uuid4()),
        "name": meter.name,
        "type": meter.type,
        "unit": meter.unit,
        "volume": float(volume),
        "user_id": resource.user_id,
        "user_name": None,
        "project_id": resource.project_id,
        "project_name": None,
        "resource_id": resource.id,
        "timestamp": timestamp_us if timestamp_us is not None else time.time_ns() // 1000,
        "monotonic_time": monotonic_time,
        "resource_metadata": dict(metadata) if metadata is not None else metadata_to_strings(resource.metadata),
        "source": source,
        "message_signature": None,
    }


class StaticDiscovery(Discovery):
    """The source's ``resources`` from polling.yaml, as given (entry point ``static``)."""

    def discover(self) -> list[Resource]:
        return list(self.resources)
