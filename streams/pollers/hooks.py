"""Edge hooks: per-meter plugins run inside the agent on every polled sample.

Hosts need not ship every sample. Each hook sees a sample and says whether
it goes on (True) or is dropped (False); hooks of a meter run in the order
configured and the first drop wins. Built-ins (entry points ``streams.edge_hooks``):

* ``pass``: keeps the sample (explicitly documents "ship it").
* ``drop``: drops it.
* ``watermark``: keeps a sample only around a threshold, per (meter, resource):
  ``emit: crossing`` (default) keeps the sample whose value crosses
  ``threshold`` in ``direction`` (``above``/``below``) or crosses back, and
  the first sample of a resource when it is already beyond; ``emit: beyond``
  keeps every sample beyond the threshold. E.g. cpu_util above 90.
* ``statsd``: also sends ``<prefix>.<meter>[.<resource>]:<value>|g`` over UDP
  to ``address`` (host:port) and keeps the sample.

Configuration is one YAML/JSON document, kept in ZooKeeper at
``<coordination.root>/hooks`` and applied on change without a restart::

    hooks:
      - {meters: ["cpu_util"], kind: watermark, threshold: 90, direction: above}
      - {meters: ["memory.*", "!memory.usage"], kind: drop}
      - {meters: ["cpu"], kind: statsd, address: "127.0.0.1:8125", prefix: streams}

A document that does not validate is logged and counted
(``streams_edge_hook_config_errors_total``) and the previous hooks stay.
A new document starts its watermarks with no state.
"""

from __future__ import annotations

import abc
import logging
import re
import socket
import threading
from collections.abc import Iterable
from typing import Any, Literal

import yaml
from cachetools import TTLCache
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streams.codec import Sample
from streams.observability import EDGE_HOOK_CONFIG_ERRORS, EDGE_HOOK_DROPPED
from streams.pollers.polling import MeterSelector, check_patterns, load_plugin

log = logging.getLogger(__name__)
HOOK_GROUP = "streams.edge_hooks"


class EdgeHook(abc.ABC):
    """One hook: ``__call__(sample) -> keep?``. Built with its config keys as keyword arguments."""

    @abc.abstractmethod
    def __call__(self, sample: Sample) -> bool:
        """True to keep ``sample``, False to drop it. Must not raise for a well-formed sample."""


class PassHook(EdgeHook):
    def __init__(self, **_: Any) -> None:
        pass

    def __call__(self, sample: Sample) -> bool:
        return True


class DropHook(EdgeHook):
    def __init__(self, **_: Any) -> None:
        pass

    def __call__(self, sample: Sample) -> bool:
        return False


class WatermarkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float
    direction: Literal["above", "below"] = "above"
    emit: Literal["crossing", "beyond"] = "crossing"
    max_series: int = Field(100_000, gt=0, description="Most (meter, resource) series remembered (LRU beyond).")
    series_ttl: float = Field(3600.0, gt=0, description="Seconds a series not seen is remembered.")


class WatermarkHook(EdgeHook):
    """Keeps samples at watermark crossings (or beyond it); state per (meter, resource_id).

    The state is bounded: at most ``max_series`` series, each forgotten ``series_ttl``
    seconds after its last sample (processes come and go; their ids never return). A
    forgotten series starts again like a new one: its next sample is kept if beyond.
    """

    def __init__(self, **params: Any) -> None:
        p = WatermarkParams(**params)
        self.threshold, self.direction, self.emit = p.threshold, p.direction, p.emit
        self._beyond: TTLCache[tuple[str, str], bool] = TTLCache(maxsize=p.max_series, ttl=p.series_ttl)

    def is_beyond(self, value: float) -> bool:
        return value > self.threshold if self.direction == "above" else value < self.threshold

    def __call__(self, sample: Sample) -> bool:
        now = self.is_beyond(sample["volume"])
        if self.emit == "beyond":
            return now
        key = (sample["name"], sample["resource_id"])
        before = self._beyond.get(key)
        self._beyond[key] = now
        return now if before is None else now != before


class StatsdParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(pattern=r"^[^:]+:\d+$")
    prefix: str = "streams"
    include_resource: bool = True


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class StatsdHook(EdgeHook):
    """Sends a statsd gauge line per sample over UDP (fire and forget) and keeps the sample."""

    def __init__(self, **params: Any) -> None:
        p = StatsdParams(**params)
        host, _, port = p.address.rpartition(":")
        self.target = (host, int(port))
        self.prefix, self.include_resource = p.prefix, p.include_resource
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def line(self, sample: Sample) -> str:
        name = f"{self.prefix}.{sample['name']}"
        if self.include_resource:
            name += "." + _UNSAFE.sub("_", sample["resource_id"])
        return f"{name}:{sample['volume']:g}|g"

    def __call__(self, sample: Sample) -> bool:
        try:
            self._sock.sendto(self.line(sample).encode(), self.target)
        except OSError as exc:
            log.debug("statsd send failed: %r", exc)
        return True


class HookSpec(BaseModel):
    """One entry of the hooks document: meter patterns, the hook's kind, and its parameters."""

    model_config = ConfigDict(extra="allow")
    meters: list[str] = Field(min_length=1)
    kind: str

    _patterns = field_validator("meters")(classmethod(lambda cls, v: check_patterns(v)))


class HooksDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hooks: list[HookSpec] = Field(default_factory=list)


class HookChain:
    """The hooks in force; :meth:`apply` filters a poll's samples. Thread-safe replacement.

    Args:
        hooks: (meter selector, hook) pairs in order.
    """

    def __init__(self, hooks: Iterable[tuple[MeterSelector, EdgeHook]] = ()) -> None:
        self._hooks = list(hooks)
        self._lock = threading.Lock()
        self.version = 0

    @staticmethod
    def build(document: Any) -> list[tuple[MeterSelector, EdgeHook]]:
        """Hooks from a parsed document (None/empty = no hooks).

        Raises:
            ValueError: invalid document, unknown kind or bad parameters (message says which hook).
        """
        if document in (None, "", {}):
            return []
        try:
            doc = HooksDocument.model_validate(document)
        except ValidationError as exc:
            raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        out = []
        for i, spec in enumerate(doc.hooks):
            try:
                cls = load_plugin(HOOK_GROUP, spec.kind)
                out.append((MeterSelector(tuple(spec.meters)), cls(**(spec.model_extra or {}))))
            except (LookupError, ValidationError, TypeError, ValueError) as exc:
                raise ValueError(f"hooks[{i}] ({spec.kind}): {exc}") from None
        return out

    def replace(self, hooks: list[tuple[MeterSelector, EdgeHook]]) -> None:
        with self._lock:
            self._hooks = hooks
            self.version += 1

    def load(self, raw: bytes | None) -> bool:
        """Apply a raw (YAML or JSON) document; on error keep the old hooks, log, count, return False."""
        try:
            hooks = self.build(yaml.safe_load(raw) if raw else None)
        except (ValueError, yaml.YAMLError) as exc:
            EDGE_HOOK_CONFIG_ERRORS.inc()
            log.error("edge hooks not changed: bad document: %s", exc)
            return False
        self.replace(hooks)
        log.info("edge hooks: %d in force (version %d)", len(hooks), self.version)
        return True

    def apply(self, samples: Iterable[Sample]) -> list[Sample]:
        """The samples every matching hook keeps, in order."""
        with self._lock:
            hooks = self._hooks
            if not hooks:
                return list(samples)
            out = []
            for s in samples:
                keep = True
                for selector, hook in hooks:
                    if selector(s["name"]) and not hook(s):
                        keep = False
                        break
                if keep:
                    out.append(s)
                else:
                    EDGE_HOOK_DROPPED.labels(meter=s["name"]).inc()
            return out
