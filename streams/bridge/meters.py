"""Samples from Ceilometer events, by definitions in Ceilometer's ``meters.yaml`` format.

The file (Ceilometer's ``ceilometer/data/meters.d/meters.yaml`` shape)::

    metric:
      - name: memory                       # meter name (text)
        event_type: ['compute.instance.(?!create.start|update).*', 'instance.*']
        type: gauge                        # gauge | delta | cumulative
        unit: MiB                          # text, or a JSONPath
        volume: $.traits.memory_mb         # JSONPath, or a number
        resource_id: $.traits.instance_id  # JSONPath (required)
        project_id: $.traits.tenant_id     # JSONPath (optional)
        user_id: $.traits.user_id          # JSONPath (optional)
        timestamp: $.traits.launched_at    # JSONPath (optional; default: the event's generated time)
        metadata:                          # name -> JSONPath (optional)
          host: $.traits.host

As in Ceilometer (``ceilometer/meter/notifications.py``):

* ``event_type`` is one pattern or a list, each a Python regular expression
  matched at the start of the event type, so ``compute.instance.*`` works as
  a wildcard and Ceilometer's own ``compute.instance.(?!create.start|update).*``
  works as written;
* a value that is a string is a JSONPath expression (jsonpath-ng's extended
  parser, the successor of Ceilometer's jsonpath-rw-ext: filters, arithmetic,
  ``split``), a number is a constant, and a list of paths means "the first
  that has a value" (``fields: [...]`` is accepted too); ``name`` and
  ``type`` are constants;
* the first non-null match is the value; a definition whose ``volume`` or
  ``resource_id`` finds nothing yields no sample for that event;
* when two definitions share a name, the later one in the file wins.

Paths are evaluated on :meth:`streams.bridge.ceilometer.Event.document`:
``$.traits.<name>`` (what Ceilometer sends by default), and ``$.payload...``,
``$.publisher_id`` where Ceilometer's ``[event] store_raw`` keeps the raw
notification. Not supported (refused at load, naming the entry): ``lookup``
(several samples per definition) and trait ``plugin``s.

A derived sample's ``message_id`` is a UUID 5 of the event's ``message_id``
and the meter name, so a replayed event derives the same sample and storage
de-duplicates it.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from jsonpath_ng.ext import parse as jsonpath_parse

from streams.bridge.ceilometer import SAMPLE_TYPES, Event, parse_timestamp
from streams.codec import Sample, metadata_to_strings
from streams.config import ConfigError, read_yaml_file

log = logging.getLogger(__name__)

DERIVED_NAMESPACE = uuid.UUID("1b2f9a4e-6c1d-5e8f-9a0b-3c4d5e6f7a8b")
"""UUID 5 namespace of samples derived from events."""

KEYS = frozenset(("name", "event_type", "type", "unit", "volume", "resource_id", "project_id", "user_id",
                  "timestamp", "metadata", "user_metadata", "lookup", "source"))
REQUIRED = ("name", "event_type", "type", "unit", "volume", "resource_id")


def default_meters_file() -> Path:
    """The definitions shipped with the package (``streams/bridge/meters.yaml``, also ``etc/ceilometer/``)."""
    return Path(str(resources.files("streams.bridge") / "meters.yaml"))


class Getter:
    """One field of a definition: a constant, or JSONPath expressions tried in order.

    Raises:
        ValueError: an expression does not parse.
    """

    def __init__(self, spec: Any, text_is_constant: bool = False) -> None:
        if isinstance(spec, dict) and "fields" in spec:
            if "plugin" in spec:
                raise ValueError(f"trait plugin {spec['plugin']!r} is not supported")
            spec = spec["fields"]
        self.constant: Any = None
        self.paths: list = []
        if isinstance(spec, bool | int | float) or (text_is_constant and isinstance(spec, str)
                                                     and not spec.startswith("$")):
            self.constant = spec
        elif isinstance(spec, str):
            self.paths = [self._parse(spec)]
        elif isinstance(spec, list) and spec and all(isinstance(s, str) for s in spec):
            self.paths = [self._parse(s) for s in spec]
        else:
            raise ValueError(f"expected a JSONPath, a list of them or a number, got {spec!r}")

    @staticmethod
    def _parse(text: str):
        try:
            with warnings.catch_warnings():  # jsonpath-ng 1.8+ warns about Ceilometer-style syntax it still parses
                warnings.simplefilter("ignore", DeprecationWarning)
                return jsonpath_parse(text)
        except Exception as exc:  # noqa: BLE001 - the parser raises several types; all mean "bad path"
            raise ValueError(f"bad JSONPath {text!r}: {exc}") from None

    def get(self, document: dict[str, Any]) -> Any:
        """The first non-null value found, or the constant; None if nothing matches."""
        if not self.paths:
            return self.constant
        for path in self.paths:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    matches = path.find(document)
            except Exception:  # noqa: BLE001 - e.g. arithmetic on a missing or text value: no value
                continue
            for m in matches:
                if m.value is not None:
                    return m.value
        return None


@dataclass(frozen=True)
class MeterDefinition:
    """One ``metric:`` entry."""

    name: str
    event_types: tuple[re.Pattern, ...]
    type: str
    unit: Getter
    volume: Getter
    resource_id: Getter
    project_id: Getter | None
    user_id: Getter | None
    timestamp: Getter | None
    metadata: tuple[tuple[str, Getter], ...]
    user_metadata: Getter | None
    source: str | None

    def matches(self, event_type: str) -> bool:
        """True if one of the ``event_type`` patterns matches at the start (Ceilometer's ``re.match``)."""
        return any(p.match(event_type) for p in self.event_types)


class SkippedMeter(Exception):
    """A definition matched an event but could not make a sample of it (``reason``: a metric label)."""

    def __init__(self, meter: str, reason: str, detail: str) -> None:
        super().__init__(f"{meter}: {detail}")
        self.meter = meter
        self.reason = reason


def _text_or_none(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)


class MeterDefinitions:
    """All definitions of one file, and the samples they derive from events.

    Args:
        definitions: in file order; a later one with the same name replaces an earlier one.
        source: ``source`` of derived samples unless a definition sets one.
    """

    def __init__(self, definitions: list[MeterDefinition], source: str = "openstack") -> None:
        by_name = {d.name: d for d in definitions}
        self.definitions = list(by_name.values())
        self.source = source

    def __len__(self) -> int:
        return len(self.definitions)

    def samples(self, event: Event, on_skip=None) -> list[Sample]:
        """Samples of every definition matching ``event.event_type``.

        Args:
            on_skip: called with a :class:`SkippedMeter` for each matching
                definition that yields nothing (no volume, no resource id, a
                value that is not a number, a bad timestamp); the event itself
                is unaffected.
        """
        matching = [d for d in self.definitions if d.matches(event.event_type)]
        if not matching:
            return []
        doc = event.document()
        out = []
        for d in matching:
            try:
                out.append(self._sample(d, event, doc))
            except SkippedMeter as skip:
                if on_skip is not None:
                    on_skip(skip)
        return out

    def _sample(self, d: MeterDefinition, event: Event, doc: dict[str, Any]) -> Sample:
        volume = d.volume.get(doc)
        if volume is None:
            raise SkippedMeter(d.name, "no_volume", f"volume not found in {event.event_type} {event.message_id}")
        if isinstance(volume, bool):
            volume = int(volume)
        try:
            volume = float(volume)
        except (TypeError, ValueError, OverflowError):
            raise SkippedMeter(d.name, "bad_volume", f"volume {volume!r} is not a number") from None
        if not math.isfinite(volume):
            raise SkippedMeter(d.name, "bad_volume", f"volume {volume!r} is not finite")
        resource_id = _text_or_none(d.resource_id.get(doc))
        if not resource_id:
            raise SkippedMeter(d.name, "no_resource_id", f"resource_id not found in {event.event_type} "
                               f"{event.message_id}")
        unit = _text_or_none(d.unit.get(doc)) or ""
        ts = event.generated_us
        if d.timestamp is not None:
            stamp = d.timestamp.get(doc)
            if stamp is not None:
                try:
                    ts = parse_timestamp(stamp)
                except (TypeError, ValueError):
                    raise SkippedMeter(d.name, "bad_timestamp", f"timestamp {stamp!r} is not ISO 8601") from None
        metadata: dict[str, Any] = {"event_type": event.event_type}
        for key, getter in d.metadata:
            value = getter.get(doc)
            if value is not None:
                metadata[key] = value
        if d.user_metadata is not None:
            user = d.user_metadata.get(doc)
            if isinstance(user, dict):
                metadata.update({f"user_metadata.{k}": v for k, v in user.items()})
        return {
            "message_id": str(uuid.uuid5(DERIVED_NAMESPACE, f"{event.message_id}/{d.name}")),
            "name": d.name, "type": d.type, "unit": unit, "volume": volume,
            "user_id": _text_or_none(d.user_id.get(doc)) if d.user_id else None, "user_name": None,
            "project_id": _text_or_none(d.project_id.get(doc)) if d.project_id else None, "project_name": None,
            "resource_id": resource_id, "timestamp": ts, "monotonic_time": None,
            "resource_metadata": metadata_to_strings(metadata), "source": d.source or self.source,
            "message_signature": None,
        }


def _definition(entry: Any, where: str) -> MeterDefinition:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = set(entry) - KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    missing = [k for k in REQUIRED if entry.get(k) in (None, "", [])]
    if missing:
        raise ConfigError(f"{where}: required key(s) missing: {', '.join(missing)}")
    if "lookup" in entry:
        raise ConfigError(f"{where}: lookup (several samples per definition) is not supported")
    name = entry["name"]
    if not isinstance(name, str) or name.startswith("$"):
        raise ConfigError(f"{where}: name must be a meter name, not {name!r} (JSONPath names need lookup)")
    if entry["type"] not in SAMPLE_TYPES:
        raise ConfigError(f"{where}: type {entry['type']!r} is not gauge, delta or cumulative")
    patterns = entry["event_type"]
    patterns = [patterns] if isinstance(patterns, str) else patterns
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"{where}: event_type must be a pattern or a list of patterns")
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            raise ConfigError(f"{where}: event_type {p!r} is not a regular expression: {exc}") from None

    def getter(key: str, optional: bool = False) -> Getter | None:
        spec = entry.get(key)
        if spec is None and optional:
            return None
        try:
            return Getter(spec, text_is_constant=key == "unit")
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None

    metadata = entry.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ConfigError(f"{where}: metadata must be a mapping of name -> JSONPath")
    meta = []
    for key, spec in metadata.items():
        try:
            meta.append((str(key), Getter(spec)))
        except ValueError as exc:
            raise ConfigError(f"{where}: metadata.{key}: {exc}") from None
    source = entry.get("source")
    return MeterDefinition(
        name=name, event_types=tuple(compiled), type=entry["type"], unit=getter("unit"),
        volume=getter("volume"), resource_id=getter("resource_id"),
        project_id=getter("project_id", True), user_id=getter("user_id", True),
        timestamp=getter("timestamp", True), metadata=tuple(meta),
        user_metadata=getter("user_metadata", True), source=source if isinstance(source, str) else None)


def parse_meters(document: Any, label: str, source: str = "openstack") -> MeterDefinitions:
    """Definitions from a parsed ``meters.yaml`` document (``label`` names it in errors).

    Raises:
        ConfigError: ``<label>: metric[<i>] (<name>): <problem>``.
    """
    if not isinstance(document, dict) or not isinstance(document.get("metric"), list):
        raise ConfigError(f"{label}: expected a mapping with a 'metric' list")
    defs = []
    for i, entry in enumerate(document["metric"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        defs.append(_definition(entry, f"{label}: metric[{i}]" + (f" ({name})" if name else "")))
    return MeterDefinitions(defs, source)


def load_meters(path: str | Path | None = None, source: str = "openstack") -> MeterDefinitions:
    """Load ``path`` (default: :func:`default_meters_file`).

    Raises:
        ConfigError: missing file, bad YAML, or a bad definition (file, entry and problem named).
    """
    path = Path(path) if path else default_meters_file()
    defs = parse_meters(read_yaml_file(path, "meters"), str(path), source)
    log.info("%d meter definitions from %s", len(defs), path)
    return defs

