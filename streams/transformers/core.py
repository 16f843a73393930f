"""Ceilometer's transformers: unit_conversion, rate_of_change, delta, accumulator,
aggregator, arithmetic. Parameters follow Ceilometer's pipeline.yaml, so an
operator's existing definitions carry over (``source``/``target`` mappings,
``scale`` expressions, ``map_from``/``map_to``, ``growth_only``, ``size``,
``retention_time``, attribute policies).

Differences from Ceilometer, on purpose:

* expressions are safe (see :mod:`streams.transformers.expression`), and
  refer to metadata by bare name (``cpu_number``), not ``resource_metadata.x``
  (``resource_metadata.x`` is accepted and rewritten to ``x``);
* stateful transformers keep state per resource in the processor's Faust
  table and ignore samples not newer than the last one of their series, so
  redelivery and reordering cannot corrupt them;
* aggregator retention is measured in event time (sample timestamps).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from streams.codec import Sample
from streams.transformers.base import (
    Transformer,
    TransformerConfigError,
    TransformError,
    compile_regex,
    derive,
    derived_id,
)
from streams.transformers.expression import Expression, ExpressionError

SAMPLE_TYPES = ("gauge", "delta", "cumulative")

_MEMO_ENTRIES = 4096
"""Most (name, unit) pairs and mapped values one transformer remembers; past that it computes them each time."""


def _mapping(params: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = params.get(key) or {}
    if not isinstance(value, Mapping):
        raise TransformerConfigError(f"{where}.{key}: must be a mapping")
    return dict(value)


def _scale(value: Any, where: str) -> Expression | float:
    """``scale`` may be a number or an expression over ``volume`` and metadata names."""
    if value is None:
        return 1.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise TransformerConfigError(f"{where}: must be a number or an expression")
    try:
        return Expression(re.sub(r"\bresource_metadata\.", "", value), None)
    except ExpressionError as exc:
        raise TransformerConfigError(f"{where}: {exc}") from None


def _apply_scale(scale: Expression | float, volume: float, sample: Sample) -> float:
    if isinstance(scale, float):
        return volume * scale
    variables: dict[str, float] = {"volume": volume}
    md = sample.get("resource_metadata") or {}
    for name in scale.variables:
        if name == "volume":
            continue
        raw = md.get(name)
        if raw is None:
            raise TransformError(f"{scale.source}: resource_metadata.{name} is missing on {sample['resource_id']}")
        try:
            variables[name] = float(raw)
        except ValueError:
            raise TransformError(f"{scale.source}: resource_metadata.{name}={raw!r} is not a number") from None
    try:
        result = scale(variables)
    except ArithmeticError as exc:
        raise TransformError(f"{scale.source}: {exc}") from None
    # A scale expression that mentions volume is the converted value; otherwise a factor.
    return result if "volume" in scale.variables else volume * result


class _Target:
    """The ``target`` mapping shared by most transformers: name, unit, type, map_to."""

    def __init__(self, params: Mapping[str, Any], where: str, default_type: str | None = None) -> None:
        source = _mapping(params, "source", where)
        target = _mapping(params, "target", where)
        self.name: str | None = target.get("name")
        self.unit: str | None = target.get("unit")
        self.type: str | None = target.get("type", default_type)
        if self.type is not None and self.type not in SAMPLE_TYPES:
            raise TransformerConfigError(f"{where}.target.type: {self.type!r} is not one of {SAMPLE_TYPES}")
        self.scale = _scale(target.get("scale"), f"{where}.target.scale")
        self.source_unit: str | None = source.get("unit")
        map_from = _mapping(source, "map_from", f"{where}.source")
        map_to = _mapping(target, "map_to", f"{where}.target")
        if set(map_from) != set(map_to):
            raise TransformerConfigError(f"{where}: source.map_from and target.map_to must name the same fields")
        self.maps = {
            field: (compile_regex(map_from[field], f"{where}.source.map_from.{field}"), map_to[field])
            for field in map_from
            if field in ("name", "unit")
        }
        self._fixed = {field: getattr(self, field) for field in ("name", "unit", "type")
                       if getattr(self, field) is not None}
        # Both are pure functions of a few strings (meter names and units, a handful per pipeline):
        # remembered, they cost a dict lookup instead of regex searches and template expansions.
        self._accepted: dict[tuple[str, str], bool] = {}
        self._mapped: dict[tuple[str, str], str] = {}

    def changes(self, sample: Sample, volume: float) -> dict[str, Any]:
        """The fields of the derived sample: ``volume``, the target's name, unit and type, and the
        ``map_to`` rewrites of the sample's name and unit (``re.sub``, remembered per input value)."""
        out: dict[str, Any] = {"volume": volume, **self._fixed}
        for field, (pattern, replacement) in self.maps.items():
            value = sample[field]  # type: ignore[literal-required]
            mapped = self._mapped.get((field, value))
            if mapped is None:
                mapped = pattern.sub(replacement, value)
                if len(self._mapped) < _MEMO_ENTRIES:
                    self._mapped[(field, value)] = mapped
            out[field] = mapped
        return out

    def accepts(self, sample: Sample) -> bool:
        """Whether the ``source`` section matches: its ``unit``, and every ``map_from`` pattern
        (``re.search``), on the sample's name and unit; remembered per (name, unit)."""
        if not self.maps and self.source_unit is None:
            return True
        key = (sample["name"], sample["unit"])
        accepted = self._accepted.get(key)
        if accepted is None:
            accepted = (self.source_unit is None or key[1] == self.source_unit) and all(
                pattern.search(sample[field]) is not None  # type: ignore[literal-required]
                for field, (pattern, _) in self.maps.items())
            if len(self._accepted) < _MEMO_ENTRIES:
                self._accepted[key] = accepted
        return accepted


class UnitConversion(Transformer):
    """Scale and rename: ``target.scale`` (number or expression), ``target.name/unit/type``,
    regex ``source.map_from`` -> ``target.map_to`` on name and unit. Stateless.

    Samples the source section does not match (unit, map_from) pass unchanged.
    """

    name = "unit_conversion"

    def __init__(self, transformer_id: str, parameters: Mapping[str, Any]) -> None:
        super().__init__(transformer_id, parameters)
        self.target = _Target(parameters, transformer_id)

    def handle(self, sample: Sample, state: dict[str, Any]) -> list[Sample]:
        if not self.target.accepts(sample):
            return [sample]
        volume = _apply_scale(self.target.scale, sample["volume"], sample)
        return [derive(sample, self.id, **self.target.changes(sample, volume))]


def _series_advance(state: dict[str, Any], sample: Sample) -> list[Any] | None:
    """Record ``sample`` as the newest of its meter; return the previous entry.

    Returns None (and changes nothing) if ``sample`` is not newer than the last
    one of its series (duplicate or out-of-order). State entry per meter:
    ``[timestamp_us, monotonic_time, volume]``; a first sample returns ``[]``.
    """
    series = state.setdefault("series", {})
    prev = series.get(sample["name"])
    if prev is not None and sample["timestamp"] <= prev[0]:
        return None
    series[sample["name"]] = [sample["timestamp"], sample.get("monotonic_time"), sample["volume"]]
    return prev or []


class RateOfChange(Transformer):
    """Cumulative -> rate per second, scaled (Ceilometer's rate_of_change).

    ``rate = Δvolume / Δt`` with Δt from ``monotonic_time`` when both samples
    have it and it advanced, else from timestamps; then ``target.scale``
    (e.g. ``"100.0 / (1e9 * cpu_number)"`` turns cpu ns into cpu_util %) and an
    optional ``target.max`` clamp. The first sample of a series yields nothing.
    A counter that dropped was reset: the new value counts from zero
    (Δvolume = volume), as Ceilometer and Prometheus' ``rate()`` do, so a rate
    is never negative.
    """

    name = "rate_of_change"
    stateful = True

    def __init__(self, transformer_id: str, parameters: Mapping[str, Any]) -> None:
        super().__init__(transformer_id, parameters)
        self.target = _Target(parameters, transformer_id, default_type="gauge")
        maximum = _mapping(parameters, "target", transformer_id).get("max")
        if maximum is not None and not isinstance(maximum, (int, float)):
            raise TransformerConfigError(f"{transformer_id}.target.max: must be a number")
        self.max = None if maximum is None else float(maximum)

    def handle(self, sample: Sample, state: dict[str, Any]) -> list[Sample]:
        if not self.target.accepts(sample):
            return [sample]
        prev = _series_advance(state, sample)
        if not prev:
            return []
        prev_ts, prev_mono, prev_volume = prev
        mono = sample.get("monotonic_time")
        if mono is not None and prev_mono is not None and mono > prev_mono:
            dt = mono - prev_mono
        else:
            dt = (sample["timestamp"] - prev_ts) / 1e6
        volume = sample["volume"]
        delta = volume - prev_volume if volume >= prev_volume else volume
        rate = _apply_scale(self.target.scale, delta / dt, sample)
        if self.max is not None:
            rate = min(rate, self.max)
        return [derive(sample, self.id, **self.target.changes(sample, rate))]


class Delta(Transformer):
    """Cumulative -> delta between consecutive samples (Ceilometer's delta).

    Target name defaults to ``<name>.delta``; with ``growth_only`` negative
    deltas are dropped. The first sample of a series yields nothing.
    """

    name = "delta"
    stateful = True

    def __init__(self, transformer_id: str, parameters: Mapping[str, Any]) -> None:
        super().__init__(transformer_id, parameters)
        self.target_name = _mapping(parameters, "target", transformer_id).get("name")
        self.growth_only = bool(parameters.get("growth_only", False))

    def handle(self, sample: Sample, state: dict[str, Any]) -> list[Sample]:
        prev = _series_advance(state, sample)
        if not prev:
            return []
        delta = sample["volume"] - prev[2]
        if self.growth_only and delta < 0:
            return []
        return [derive(sample, self.id, name=self.target_name or f"{sample['name']}.delta",
                       type="delta", volume=delta)]


class Accumulator(Transformer):
    """Holds samples of a resource and releases them ``size`` at a time (Ceilometer's accumulator)."""

    name = "accumulator"
    stateful = True

    def __init__(self, transformer_id: str, parameters: Mapping[str, Any]) -> None:
        super().__init__(transformer_id, parameters)
        size = parameters.get("size", 1)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise TransformerConfigError(f"{transformer_id}.size: must be a positive integer")
        self.size = size

    def handle(self, sample: Sample, state: dict[str, Any]) -> list[Sample]:
        held: list[Sample] = state.setdefault("held", [])
        if any(h["message_id"] == sample["message_id"] for h in held):
            return []
        held.append(dict(sample))  # type: ignore[arg-type]
        if len(held) < self.size:
            return []
        state["held"] = []
        return held


_POLICIES = ("first", "last", "drop")


class Aggregator(Transformer):
    """Merges samples of one meter of a resource into one (Ceilometer's aggregator).

    Volume: gauge and delta samples are summed, cumulative ones keep the last
    value. Emits when ``size`` samples were merged or when a sample arrives
    ``retention_time`` seconds (event time) after the first merged one.
    Attribute policies ``project_id``, ``user_id``, ``resource_metadata``:
    ``first``, ``last`` (default) or ``drop`` (set to None / empty).
    """

    name = "aggregator"
    stateful = True

    def __init__(self, transformer_id: str, parameters: Mapping[str, Any]) -> None:
        super().__init__(transformer_id, parameters)
        size = parameters.get("size", 1 if parameters.get("retention_time") is None else None)
        retention = parameters.get("retention_time")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise TransformerConfigError(f"{transformer_id}.size: must be a positive integer")
        if retention is not None and (not isinstance(retention, (int, float)) or retention <= 0):
            raise TransformerConfigError(f"{transformer_id}.retention_time: must be a positive number of seconds")
        self.size = size
        self.retention_us = None if retention is None else int(retention * 1e6)
        self.policies = {}
        for attr in ("project_id", "user_id", "resource_metadata"):
            policy = parameters.get(attr, "last")
            if policy not in _POLICIES:
                raise TransformerConfigError(f"{transformer_id}.{attr}: {policy!r} is not one of {_POLICIES}")
            self.policies[attr] = policy
        self.target = _Target(parameters, transformer_id)

    def handle(self, sample: Sample, state: dict[str, Any]) -> list[Sample]:
        pending: dict[str, Any] = state.setdefault("pending", {})
        out: list[Sample] = []
        agg = pending.get(sample["name"])
        if agg is not None and sample["timestamp"] <= agg["last_ts"]:
            return []  # duplicate or out of order
        if agg is not None and self.retention_us is not None \
                and sample["timestamp"] - agg["first_ts"] >= self.retention_us:
            out.append(self._emit(agg))
            agg = None
        if agg is None:
            agg = {"sample": dict(sample), "count": 0, "first_ts": sample["timestamp"], "last_ts": 0}
            for attr, policy in self.policies.items():
                if policy == "drop":
                    agg["sample"][attr] = {} if attr == "resource_metadata" else None
        else:
            merged = agg["sample"]
            if sample["type"] == "cumulative":
                merged["volume"] = sample["volume"]
            else:
                merged["volume"] += sample["volume"]
            for attr, policy in self.policies.items():
                if policy == "last":
                    merged[attr] = sample.get(attr)
            merged["timestamp"] = sample["timestamp"]
            merged["message_id"] = sample["message_id"]
        agg["count"] += 1
        agg["last_ts"] = sample["timestamp"]
        pending[sample["name"]] = agg
        if self.size is not None and agg["count"] >= self.size:
            out.append(self._emit(agg))
            del pending[sample["name"]]
        return out

    def _emit(self, agg: dict[str, Any]) -> Sample:
        merged: Sample = agg["sample"]
        volume = _apply_scale(self.target.scale, merged["volume"], merged)
        return derive(merged, self.id, **self.target.changes(merged, volume))


_METER_REF = re.compile(r"\$\(([A-Za-z0-9_.:-]+)\)")


class Arithmetic(Transformer):
    """A new meter from an expression over several meters of one resource
    (Ceilometer's arithmetic), e.g. ``target.expr: "100 * $(memory.usage) / $(memory)"``.

    Emits when every referenced meter has a value from the same poll
    (same timestamp) as the arriving sample; the arriving sample seeds the
    derived sample's resource and metadata. Samples of the referenced meters
    are consumed, as in Ceilometer; other samples pass through unchanged.
    """

    name = "arithmetic"
    stateful = True

    def __init__(self, transformer_id: str, parameters: Mapping[str, Any]) -> None:
        super().__init__(transformer_id, parameters)
        target = _mapping(parameters, "target", transformer_id)
        expr = target.get("expr")
        if not isinstance(expr, str) or not expr:
            raise TransformerConfigError(f"{transformer_id}.target.expr: required")
        if not target.get("name"):
            raise TransformerConfigError(f"{transformer_id}.target.name: required")
        self.meters: list[str] = []

        def var(m: re.Match[str]) -> str:
            if m.group(1) not in self.meters:
                self.meters.append(m.group(1))
            return f"_m{self.meters.index(m.group(1))}"

        rewritten = _METER_REF.sub(var, expr)
        if not self.meters:
            raise TransformerConfigError(f"{transformer_id}.target.expr: references no meter like $(cpu)")
        try:
            self.expr = Expression(rewritten, [f"_m{i}" for i in range(len(self.meters))])
        except ExpressionError as exc:
            raise TransformerConfigError(f"{transformer_id}.target.expr: {exc}") from None
        self.target_name = target["name"]
        self.target_unit = target.get("unit", "")
        self.target_type = target.get("type", "gauge")
        if self.target_type not in SAMPLE_TYPES:
            raise TransformerConfigError(
                f"{transformer_id}.target.type: {self.target_type!r} is not one of {SAMPLE_TYPES}")

    def handle(self, sample: Sample, state: dict[str, Any]) -> list[Sample]:
        if sample["name"] not in self.meters:
            return [sample]
        latest: dict[str, list] = state.setdefault("latest", {})
        prev = latest.get(sample["name"])
        if prev is not None and sample["timestamp"] <= prev[0]:
            return []  # duplicate or out of order: state unchanged
        latest[sample["name"]] = [sample["timestamp"], sample["volume"]]
        values = [latest.get(m) for m in self.meters]
        if any(v is None or v[0] != sample["timestamp"] for v in values):
            return []
        try:
            volume = self.expr({f"_m{i}": v[1] for i, v in enumerate(values)})  # type: ignore[index]
        except ArithmeticError as exc:
            raise TransformError(f"{self.expr.source}: {exc}") from None
        derived = derive(sample, self.id, name=self.target_name, unit=self.target_unit,
                         type=self.target_type, volume=volume)
        derived["message_id"] = derived_id(self.id, f"{sample['resource_id']}@{sample['timestamp']}")
        return [derived]


BUILTIN_TRANSFORMERS: dict[str, type[Transformer]] = {
    cls.name: cls for cls in (UnitConversion, RateOfChange, Delta, Accumulator, Aggregator, Arithmetic)
}


@functools.cache
def available_transformers() -> dict[str, type[Transformer]]:
    """Transformers by the name used in pipeline.yaml: built-ins plus the
    ``streams.transformers`` entry points of installed packages (plugins)."""
    found = dict(BUILTIN_TRANSFORMERS)
    for ep in entry_points(group="streams.transformers"):
        if ep.name not in found:
            found[ep.name] = ep.load()
    return found
