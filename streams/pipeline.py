"""pipeline.yaml: sources of meters feeding sinks of transformers and publishers.

The shape is Ceilometer's::

    sources:
      - name: meter_source
        meters: ["*"]                 # fnmatch wildcards; "!name" excludes
        sinks: [meter_sink]
      - name: cpu_source
        meters: ["cpu"]
        sinks: [cpu_sink]
    sinks:
      - name: meter_sink
        publishers: ["clickhouse://"]
      - name: cpu_sink
        transformers:
          - name: rate_of_change
            parameters:
              target: {name: cpu_util, unit: "%", type: gauge, max: 100,
                       scale: "100.0 / (1e9 * cpu_number)"}
        publishers: ["clickhouse://"]

A sample goes through every sink of every source whose meters match its
name; each sink runs its transformer chain (each step's output feeds the
next) and hands the result to its publishers, chosen by URL scheme:
``clickhouse://`` (the configured store), ``kafka://<topic>`` (re-publish,
signed), ``log://`` (log each sample). Without a pipeline file every sample
goes to ``clickhouse://`` unchanged.

Everything is validated at load time; errors name the file, the source or
sink, and the problem.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.codec import RejectedMessage, Sample
from streams.config import ConfigError, read_yaml_file
from streams.observability import TRANSFORM_ERRORS
from streams.transformers.base import Transformer, TransformerConfigError, TransformError
from streams.transformers.core import available_transformers

log = logging.getLogger(__name__)

PUBLISHER_SCHEMES = ("clickhouse", "kafka", "log")
STATE_KEY_WATERMARK = "_watermark"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TransformerDef(_Strict):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        known = available_transformers()
        if v not in known:
            raise ValueError(f"unknown transformer {v!r}; known: {', '.join(sorted(known))}")
        return v


class SinkDef(_Strict):
    name: str
    transformers: list[TransformerDef] = Field(default_factory=list)
    publishers: list[str] = Field(min_length=1)

    @field_validator("publishers")
    @classmethod
    def _schemes(cls, v: list[str]) -> list[str]:
        for url in v:
            parts = urlsplit(url)
            if parts.scheme not in PUBLISHER_SCHEMES:
                raise ValueError(f"publisher {url!r}: scheme must be one of {', '.join(PUBLISHER_SCHEMES)}")
            if parts.scheme == "kafka" and not (parts.netloc or parts.path.strip("/")):
                raise ValueError(f"publisher {url!r}: kafka:// needs a topic, e.g. kafka://samples.derived")
        return v


class SourceDef(_Strict):
    name: str
    meters: list[str] = Field(min_length=1)
    sinks: list[str] = Field(min_length=1)

    @field_validator("meters")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            body = p[1:] if p.startswith("!") else p
            if not body or body != body.strip():
                raise ValueError(f"meter pattern {p!r} is empty or has surrounding spaces")
            try:
                re.compile(fnmatch.translate(body))
            except re.error as exc:
                raise ValueError(f"meter pattern {p!r}: {exc}") from None
        return v


class PipelineDef(_Strict):
    sources: list[SourceDef] = Field(min_length=1)
    sinks: list[SinkDef] = Field(min_length=1)
    allowed_lateness: float = Field(
        300.0, ge=0,
        description="Seconds a record may be older than the newest one of its resource before it is "
                    "dead-lettered with reason 'late' (only where stateful transformers are used).",
    )

    @model_validator(mode="after")
    def _references(self) -> PipelineDef:
        sink_names = [s.name for s in self.sinks]
        dup = {n for n in sink_names if sink_names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate sink name(s): {', '.join(sorted(dup))}")
        for src in self.sources:
            missing = [s for s in src.sinks if s not in sink_names]
            if missing:
                raise ValueError(f"source {src.name!r} feeds unknown sink(s) {', '.join(missing)}")
        return self


DEFAULT_PIPELINE = PipelineDef(
    sources=[SourceDef(name="all_meters", meters=["*"], sinks=["storage"])],
    sinks=[SinkDef(name="storage", publishers=["clickhouse://"])],
)


class _MeterMatcher:
    def __init__(self, patterns: list[str]) -> None:
        include = [p for p in patterns if not p.startswith("!")]
        exclude = [p[1:] for p in patterns if p.startswith("!")]
        self._include = re.compile("|".join(fnmatch.translate(p) for p in include or ["*"]))
        self._exclude = re.compile("|".join(fnmatch.translate(p) for p in exclude)) if exclude else None

    def __call__(self, meter: str) -> bool:
        return bool(self._include.match(meter)) and not (self._exclude and self._exclude.match(meter))


class CompiledSink:
    """A sink ready to run: its transformer instances and publisher URLs."""

    def __init__(self, definition: SinkDef) -> None:
        self.name = definition.name
        self.publishers = list(definition.publishers)
        self.transformers: list[Transformer] = []
        for i, t in enumerate(definition.transformers):
            tid = f"{definition.name}/{i}"
            try:
                self.transformers.append(available_transformers()[t.name](tid, t.parameters))
            except TransformerConfigError as exc:
                raise ConfigError(f"sink {definition.name!r}, transformer {i} ({t.name}): {exc}") from None
        self.stateful = any(t.stateful for t in self.transformers)


class Pipeline:
    """A compiled pipeline: routes samples through sinks to publisher URLs.

    Args:
        definition: the validated pipeline.yaml.

    Raises:
        ConfigError: a transformer's parameters are invalid.
    """

    def __init__(self, definition: PipelineDef = DEFAULT_PIPELINE) -> None:
        self.definition = definition
        self.sinks = {s.name: CompiledSink(s) for s in definition.sinks}
        self._sources = [(_MeterMatcher(s.meters), [self.sinks[n] for n in s.sinks]) for s in definition.sources]
        self._routes: dict[str, list[CompiledSink]] = {}
        self._plans: dict[str, tuple[tuple[str, ...], tuple[CompiledSink, ...]]] = {}
        self.stateful = any(s.stateful for s in self.sinks.values())
        self.publishers = sorted({url for s in self.sinks.values() for url in s.publishers})
        self.allowed_lateness_us = int(definition.allowed_lateness * 1e6)
        self.transform_errors: dict[str, int] = defaultdict(int)

    def sinks_for(self, meter: str) -> list[CompiledSink]:
        """Sinks a meter feeds (cached per meter name)."""
        route = self._routes.get(meter)
        if route is None:
            route = []
            for matches, sinks in self._sources:
                if matches(meter):
                    route.extend(s for s in sinks if s not in route)
            self._routes[meter] = route
        return route

    def check_lateness(self, samples: list[Sample], state: dict[str, Any]) -> None:
        """Advance the resource's event-time watermark; reject a record older than it allows.

        Raises:
            RejectedMessage: stage ``transform``, reason ``late``.
        """
        self.check_watermark(max(s["timestamp"] for s in samples), state)

    def check_watermark(self, newest: int, state: dict[str, Any]) -> None:
        """:meth:`check_lateness` given the record's newest sample time (µs).

        Raises:
            RejectedMessage: stage ``transform``, reason ``late``.
        """
        watermark = state.get(STATE_KEY_WATERMARK, 0)
        if newest < watermark - self.allowed_lateness_us:
            raise RejectedMessage(
                "transform", "late",
                f"newest sample at {newest} us is {(watermark - newest) / 1e6:.1f}s behind the resource's "
                f"watermark {watermark} us (allowed lateness {self.allowed_lateness_us / 1e6:g}s)")
        if newest > watermark:
            state[STATE_KEY_WATERMARK] = newest

    def plan(self, meter: str) -> tuple[tuple[str, ...], tuple[CompiledSink, ...]]:
        """For ``meter``: the publisher URLs that take its samples unchanged (sinks without
        transformers), and the sinks that transform them. Cached per meter name."""
        plan = self._plans.get(meter)
        if plan is None:
            direct: list[str] = []
            transforming: list[CompiledSink] = []
            for sink in self.sinks_for(meter):
                if sink.transformers:
                    transforming.append(sink)
                else:
                    direct.extend(u for u in sink.publishers if u not in direct)
            plan = self._plans[meter] = (tuple(direct), tuple(transforming))
        return plan

    def transform(self, sink: CompiledSink, sample: Sample,
                  state_for: Callable[[str], dict[str, Any]]) -> list[Sample]:
        """Run one sample through ``sink``'s transformer chain; return what reaches its publishers.

        A :class:`TransformError` loses that sample's output only (counted and logged).
        """
        state = state_for(sample["resource_id"]) if sink.stateful else {}
        results = [sample]
        for t in sink.transformers:
            step: list[Sample] = []
            for r in results:
                try:
                    step.extend(t.handle(r, state.setdefault(t.id, {}) if t.stateful else state))
                except TransformError as exc:
                    # One sample's output is lost, not the record: counted and logged.
                    self.transform_errors[t.id] += 1
                    TRANSFORM_ERRORS.labels(transformer=t.id).inc()
                    log.warning("transformer %s skipped %s of %s: %s", t.id, r["name"], r["resource_id"], exc)
            results = step
            if not results:
                break
        return results

    def route(self, samples: Iterable[Sample], state_for: Callable[[str], dict[str, Any]],
              out: dict[str, list[Sample]]) -> None:
        """Run ``samples`` through their sinks; append results to ``out[publisher_url]``.

        Args:
            state_for: resource_id -> that resource's mutable state dict
                (called only for sinks with stateful transformers).
        """
        for sample in samples:
            direct, transforming = self.plan(sample["name"])
            for url in direct:
                out.setdefault(url, []).append(sample)
            for sink in transforming:
                results = self.transform(sink, sample, state_for)
                for url in sink.publishers:
                    out.setdefault(url, []).extend(results)


def load_pipeline(path: str | Path | None) -> Pipeline:
    """Load and compile ``path`` (None: the default pipeline, all meters to ClickHouse).

    Raises:
        ConfigError: missing file, bad YAML, or an invalid source, sink or
            transformer; the message names the file and the place.
    """
    if path is None:
        return Pipeline(DEFAULT_PIPELINE)
    p = Path(path)
    raw = read_yaml_file(p, "pipeline")
    try:
        definition = PipelineDef.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(raw, err) for err in exc.errors())
        raise ConfigError(f"{p}: {problems}") from None
    try:
        return Pipeline(definition)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def _describe(raw: Any, err: dict[str, Any]) -> str:
    """``sinks[1] (cpu_sink).publishers.0: problem`` — index plus the entry's name when known."""
    parts: list[str] = []
    node = raw
    for loc in err["loc"]:
        if isinstance(loc, int):
            name = node[loc].get("name") if isinstance(node, list) and loc < len(node) \
                and isinstance(node[loc], dict) else None
            parts[-1] = f"{parts[-1]}[{loc}]" + (f" ({name})" if name else "")
        else:
            parts.append(str(loc))
        try:
            node = node[loc]
        except (KeyError, IndexError, TypeError):
            node = None
    return f"{'.'.join(parts) or 'pipeline'}: {err['msg']}"
