"""What Ceilometer's ``notifier://…?driver=kafka`` publisher writes, read back: pure logic, no I/O.

A Kafka record (topics ``metering.sample``, ``event.sample``, with a
``.<virtual host>`` suffix when the publisher URL has a path) holds the
oslo.messaging 2.0 envelope, a JSON object whose ``oslo.message`` is a JSON
document *inside a string*::

    {"oslo.version": "2.0", "oslo.message": "{\\"message_id\\": ..., \\"event_type\\": \\"metering\\",
     \\"priority\\": \\"SAMPLE\\", \\"publisher_id\\": ..., \\"payload\\": [...], \\"timestamp\\": ...}"}

``payload`` is a list of metering messages (Ceilometer's ``Sample`` fields:
``counter_name``, ``counter_type``, ``counter_unit``, ``counter_volume``, ...)
or of event messages (``event_type``, ``generated``, ``traits``, ``raw``),
each signed on its own (:mod:`streams.bridge.signing`). Captures and the
field-by-field description: ``tests/data/ceilometer/README.md``.

:class:`CeilometerReader` turns one record value into verified, normalized
samples (``streams.Sample`` dicts) and :class:`Event` objects, and a list of
what it refused. Every refusal is a :class:`~streams.codec.RejectedMessage`
with a stage and a stable reason:

=========  ===================================================================
stage      reasons
=========  ===================================================================
limits     ``empty``, ``too_large`` (bytes), ``too_deep`` (nesting),
           ``too_many_entries`` (payload)
unwrap     ``not_json``, ``not_oslo_envelope``, ``no_payload``
verify     ``unsigned`` (no or empty signature), ``bad_signature``
normalize  ``unknown_message``, ``bad_field``, ``bad_type``, ``bad_volume``,
           ``non_finite_volume``, ``bad_timestamp``, ``empty_field``,
           ``bad_traits``
=========  ===================================================================

Limits are checked on the raw bytes before any JSON is parsed (size, then
bracket nesting), and the number of payload entries before any entry is
verified. The nesting check counts the brackets of the whole record,
including those inside strings, so it is exact for normal records and
conservative for strings full of ``[`` or ``{``; a record deeper than
Python's parser allows is refused as ``too_deep`` too.
"""

from __future__ import annotations

import itertools
import json
import logging
import marshal
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

try:
    from streams import _bridge as _native
except ImportError:  # not built: the Python versions below do the same
    _native = None

from streams.bridge.signing import Verifier, nested_text
from streams.codec import RejectedMessage, Sample, clip, metadata_to_strings
from streams.processor.normalize import Normalizer

log = logging.getLogger(__name__)

SAMPLE_TYPES = frozenset(("gauge", "delta", "cumulative"))
"""Ceilometer's ``counter_type`` values (``ceilometer/sample.py`` TYPES)."""

TRAIT_TYPES = {0: "none", 1: "string", 2: "integer", 3: "float", 4: "datetime"}
"""Ceilometer's trait dtype codes (``ceilometer/event/models.py`` Trait)."""

_EXACT = 2**53  # ints below this convert to float exactly and never overflow
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Bracket nesting on raw bytes at C speed: keep only brackets, map each to +1/-1, running sum.
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


@dataclass(frozen=True)
class Limits:
    """Input limits, checked before work is done (``ceilometer.max_*`` settings).

    Attributes:
        max_record_bytes: largest record value accepted, in bytes.
        max_depth: deepest bracket nesting of the record (the envelope, the
            inner document, payload list, message and metadata each add one).
        max_payload_entries: most samples or events in one record's payload.
    """

    max_record_bytes: int = 4 * 1024 * 1024
    max_depth: int = 32
    max_payload_entries: int = 10_000


def nesting_depth(value: bytes) -> int:
    """Deepest ``[``/``{`` nesting of ``value``, counting every bracket byte (strings included).

    The running sum of +1 per ``[``/``{`` and -1 per ``]``/``}``, at its highest
    (so ``b"]"`` gives -1); 0 without brackets. In C (``streams._bridge``) when built.
    """
    if _native is not None:
        return _native.nesting_depth(value)
    brackets = value.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets), operator.add))


def check_limits(value: bytes | None, limits: Limits) -> bytes:
    """Refuse ``value`` if it is empty, too large or too deep; return it otherwise.

    Raises:
        RejectedMessage: stage ``limits``.
    """
    if not value:
        raise RejectedMessage("limits", "empty", "record has no value")
    if len(value) > limits.max_record_bytes:
        raise RejectedMessage("limits", "too_large",
                              f"{len(value)} bytes > ceilometer.max_record_bytes {limits.max_record_bytes}")
    depth = nesting_depth(value)
    if depth > limits.max_depth:
        raise RejectedMessage("limits", "too_deep", f"nesting {depth} > ceilometer.max_depth {limits.max_depth}")
    return value


@dataclass(frozen=True)
class Envelope:
    """The decoded ``oslo.message`` of one record (oslo.messaging 2.0)."""

    message_id: str | None
    event_type: str | None
    priority: str | None
    publisher_id: str | None
    timestamp: str | None
    payload: list
    text: str | None = None  # the oslo.message text, kept when parsed fast (see unwrap)


def _loads(text: str | bytes, what: str, fast: bool = False) -> Any:
    if fast:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # NaN, Infinity, huge numbers, lone surrogates...: Python's parser decides
    try:
        return json.loads(text)
    except RecursionError:
        raise RejectedMessage("limits", "too_deep", f"{what} nests deeper than the JSON parser allows") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise RejectedMessage("unwrap", "not_json", f"{what}: {exc}") from None


def unwrap(value: bytes, limits: Limits, fast: bool = False) -> Envelope:
    """Check ``value`` against ``limits``, then parse the envelope and its inner document.

    Args:
        fast: parse with orjson (about 2.5 times faster here), falling back to
            Python's :mod:`json` for what orjson refuses. orjson reads integers
            beyond 64 bits as floats, so its result is only for messages whose
            signature is then checked: a message that does not verify is read
            again exactly (:func:`exact_payload`) before it is refused.

    Raises:
        RejectedMessage: stage ``limits`` or ``unwrap``.
    """
    check_limits(value, limits)
    outer = _loads(value, "record value", fast)
    if not isinstance(outer, dict) or not isinstance(outer.get("oslo.message"), str):
        raise RejectedMessage("unwrap", "not_oslo_envelope",
                              "expected an object with an 'oslo.message' string (oslo.messaging 2.0)")
    text = outer["oslo.message"]
    inner = _loads(text, "oslo.message", fast)
    if not isinstance(inner, dict):
        raise RejectedMessage("unwrap", "not_oslo_envelope", "oslo.message is not a JSON object")
    payload = inner.get("payload")
    if not isinstance(payload, list) or not payload:
        raise RejectedMessage("unwrap", "no_payload", "oslo.message has no payload list, or an empty one")
    if len(payload) > limits.max_payload_entries:
        raise RejectedMessage("limits", "too_many_entries",
                              f"{len(payload)} payload entries > ceilometer.max_payload_entries "
                              f"{limits.max_payload_entries}")

    def field(key: str) -> str | None:
        v = inner.get(key)
        return v if isinstance(v, str) else None

    return Envelope(field("message_id"), field("event_type"), field("priority"), field("publisher_id"),
                    field("timestamp"), payload, text if fast else None)


def exact_payload(env: Envelope) -> list:
    """The payload parsed by Python's :mod:`json` (as Ceilometer's consumers decode it)."""
    if env.text is None:
        return env.payload
    payload = _loads(env.text, "oslo.message").get("payload")
    return payload if isinstance(payload, list) and len(payload) == len(env.payload) else env.payload


@lru_cache(maxsize=4096)
def parse_timestamp(text: str) -> int:
    """ISO 8601 text (Ceilometer's ``timestamp``, an event's ``generated``) -> µs since the epoch, UTC.

    A time without a zone is UTC (Ceilometer writes ``generated`` that way).
    Exact to the microsecond (integer arithmetic, no float).

    Raises:
        ValueError: not ISO 8601.
    """
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // _US


def _optional_text(msg: Mapping[str, Any], key: str) -> str | None:
    v = msg.get(key)
    if v is None or isinstance(v, str):
        return v
    raise RejectedMessage("normalize", "bad_field", f"{key} is {type(v).__name__}, expected text or null")


def _text(msg: Mapping[str, Any], key: str) -> str:
    v = msg.get(key)
    if not isinstance(v, str):
        raise RejectedMessage("normalize", "bad_field", f"{key} is {type(v).__name__}, expected text")
    if not v:
        raise RejectedMessage("normalize", "empty_field", f"{key} is empty")
    return v


def _timestamp(msg: Mapping[str, Any], key: str) -> int:
    value = msg.get(key)
    try:
        return parse_timestamp(value)
    except (TypeError, ValueError):
        raise RejectedMessage("normalize", "bad_timestamp", f"{key} {value!r} is not ISO 8601") from None


def normalize_sample(msg: Mapping[str, Any],
                     metadata_strings: Callable[[dict], dict[str, str]] = metadata_to_strings) -> Sample:
    """One metering message -> a ``streams.Sample`` dict (units and ranges not yet checked).

    Field mapping (Ceilometer's ``meter_message_from_counter``): ``counter_name``
    -> ``name``, ``counter_type`` -> ``type``, ``counter_unit`` -> ``unit``,
    ``counter_volume`` -> ``volume`` (float), ``timestamp`` (ISO 8601, naive =
    UTC) -> µs, ``resource_metadata`` -> strings (nested values as JSON text);
    ``message_id``, ``message_signature``, ids, names, ``source`` and
    ``monotonic_time`` are kept as they are.

    Args:
        metadata_strings: flattens ``resource_metadata`` (default
            :func:`~streams.codec.metadata_to_strings`; the reader passes a memoized one).

    Raises:
        RejectedMessage: stage ``normalize``.
    """
    # Fast path for the usual message (exact types, nothing to refuse); anything else goes through
    # the checks below, in their order, so a bad message gets the same error as ever.
    get = msg.get
    mid, name, kind, unit, rid = (get("message_id"), get("counter_name"), get("counter_type"),
                                  get("counter_unit"), get("resource_id"))
    volume, mono, metadata, source = get("counter_volume"), get("monotonic_time"), get("resource_metadata"), \
        get("source")
    uid, uname, pid, pname, sig = (get("user_id"), get("user_name"), get("project_id"), get("project_name"),
                                   get("message_signature"))
    if (type(mid) is str and mid and type(name) is str and name and type(rid) is str and rid
            and type(kind) is str and kind in SAMPLE_TYPES and type(unit) is str
            and (type(volume) is float or (type(volume) is int and -_EXACT < volume < _EXACT))
            and (mono is None or type(mono) is float) and (metadata is None or type(metadata) is dict)
            and (uid is None or type(uid) is str) and (uname is None or type(uname) is str)
            and (pid is None or type(pid) is str) and (pname is None or type(pname) is str)
            and (sig is None or type(sig) is str) and (source is None or type(source) is str)):
        ts = get("timestamp")
        try:
            ts = parse_timestamp(ts)
        except (TypeError, ValueError):
            pass  # the checks below refuse it
        else:
            return {
                "message_id": mid, "name": name, "type": kind, "unit": unit, "volume": float(volume),
                "user_id": uid, "user_name": uname, "project_id": pid, "project_name": pname,
                "resource_id": rid, "timestamp": ts, "monotonic_time": mono,
                "resource_metadata": metadata_strings({} if metadata is None else metadata),
                "source": source or "openstack", "message_signature": sig,
            }
    return checked_sample(msg, metadata_strings)


def checked_sample(msg: Mapping[str, Any],
                   metadata_strings: Callable[[dict], dict[str, str]] = metadata_to_strings) -> Sample:
    """:func:`normalize_sample` without its fast path: every field checked in order (the rule itself).

    Raises:
        RejectedMessage: stage ``normalize``.
    """
    mid = _text(msg, "message_id")
    kind = msg.get("counter_type")
    if kind not in SAMPLE_TYPES:
        raise RejectedMessage("normalize", "bad_type", f"counter_type {kind!r} is not gauge, delta or cumulative")
    volume = msg.get("counter_volume")
    if isinstance(volume, bool) or not isinstance(volume, int | float):
        raise RejectedMessage("normalize", "bad_volume", f"counter_volume {volume!r} is not a number")
    try:
        volume = float(volume)
    except OverflowError:
        raise RejectedMessage("normalize", "non_finite_volume", "counter_volume overflows a double") from None
    ts = _timestamp(msg, "timestamp")
    mono = msg.get("monotonic_time")
    if mono is not None and (isinstance(mono, bool) or not isinstance(mono, int | float)):
        raise RejectedMessage("normalize", "bad_field", f"monotonic_time {mono!r} is not a number")
    metadata = msg.get("resource_metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise RejectedMessage("normalize", "bad_field", "resource_metadata is not an object")
    unit = msg.get("counter_unit")
    if not isinstance(unit, str):
        raise RejectedMessage("normalize", "bad_field", f"counter_unit {unit!r} is not text")
    source = msg.get("source")
    return {
        "message_id": mid,
        "name": _text(msg, "counter_name"),
        "type": kind,
        "unit": unit,
        "volume": volume,
        "user_id": _optional_text(msg, "user_id"),
        "user_name": _optional_text(msg, "user_name"),
        "project_id": _optional_text(msg, "project_id"),
        "project_name": _optional_text(msg, "project_name"),
        "resource_id": _text(msg, "resource_id"),
        "timestamp": ts,
        "monotonic_time": None if mono is None else float(mono),
        "resource_metadata": metadata_strings(metadata),
        "source": source if isinstance(source, str) and source else "openstack",
        "message_signature": _optional_text(msg, "message_signature"),
    }


@dataclass(frozen=True)
class Event:
    """A Ceilometer event (``ceilometer/event/models.py``), as the ``events`` table stores it.

    Attributes:
        traits: ``(name, dtype, value)`` with Ceilometer's dtype codes
            (:data:`TRAIT_TYPES`); a datetime trait's value stays ISO text.
        raw: the original notification when Ceilometer's ``[event] store_raw``
            is set, else ``{}``.
    """

    message_id: str
    event_type: str
    generated_us: int
    traits: tuple[tuple[str, int, Any], ...]
    raw: dict = field(default_factory=dict)
    message_signature: str | None = None

    def trait_map(self) -> dict[str, Any]:
        """Trait name -> value (a later trait of the same name wins)."""
        return {name: value for name, _, value in self.traits}

    def document(self) -> dict[str, Any]:
        """The JSON document ``meters.yaml`` paths are evaluated on::

            {"message_id", "event_type", "generated", "traits": {name: value},
             "raw": {...}, "payload": raw["payload"] or {}, "publisher_id": raw["publisher_id"]}

        so ``$.traits.memory_mb`` works on what Ceilometer sends by default and
        Ceilometer's own ``$.payload.memory_mb`` works where it stores raw notifications.
        """
        raw = self.raw
        payload = raw.get("payload")
        return {"message_id": self.message_id, "event_type": self.event_type,
                "generated": datetime.fromtimestamp(self.generated_us / 1e6, UTC).isoformat(),
                "traits": self.trait_map(), "raw": raw,
                "payload": payload if isinstance(payload, dict) else {},
                "publisher_id": raw.get("publisher_id")}


def trait_text(dtype: int, value: Any) -> str:
    """A trait value as stored in ``events.traits.value``: text, decimal digits, float repr, ISO text; '' for null."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def normalize_event(msg: Mapping[str, Any]) -> Event:
    """One event message -> an :class:`Event`.

    Raises:
        RejectedMessage: stage ``normalize`` (``bad_field``, ``empty_field``,
            ``bad_timestamp``, ``bad_traits``).
    """
    mid = _text(msg, "message_id")
    event_type = _text(msg, "event_type")
    generated_us = _timestamp(msg, "generated")
    traits = msg.get("traits")
    if traits is None:
        traits = []
    if not isinstance(traits, list):
        raise RejectedMessage("normalize", "bad_traits", "traits is not a list")
    out = []
    for i, t in enumerate(traits):
        if (not isinstance(t, list) or len(t) != 3 or not isinstance(t[0], str) or isinstance(t[1], bool)
                or t[1] not in TRAIT_TYPES):
            raise RejectedMessage("normalize", "bad_traits", f"traits[{i}] is not [name, dtype 0-4, value]")
        out.append((t[0], t[1], t[2]))
    raw = msg.get("raw")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RejectedMessage("normalize", "bad_field", "raw is not an object")
    return Event(mid, event_type, generated_us, tuple(out), raw, _optional_text(msg, "message_signature"))


@dataclass
class ReadResult:
    """What one record gave: samples and events that passed, and refusals.

    ``rejected`` holds ``(payload index, error)``; index -1 means the whole
    record (limits, unwrap). A record with any refusal is dead-lettered once,
    while its good entries go on (each entry is signed on its own).
    """

    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    rejected: list[tuple[int, RejectedMessage]] = field(default_factory=list)
    envelope: Envelope | None = None


class MetadataMemo:
    """The signed text and the strings of ``resource_metadata``, remembered by its exact :mod:`marshal` form.

    The samples of one instance carry the same metadata, most of what is
    signed and stored, so both are made once per distinct metadata (the same
    strings dict is handed to every such sample; nothing mutates it). The
    marshal form keeps ``1``, ``1.0`` and ``True`` apart, and key order, so
    values that merely compare equal never share an entry.

    Making the marshal form costs about as much as the rest of a sample's
    verification, so with the C module (``streams._bridge``) the last metadata
    of each resource is remembered too, and a sample whose metadata is
    ``same_json`` as it (same exact types, key order, float bits: what the
    marshal form compares) takes its entry without a marshal form. That holds
    whether a record lists samples instance by instance or meter by meter.

    Args:
        size: metadata objects remembered (and resources, separately); each memory is forgotten when full.
    """

    def __init__(self, size: int = 4096) -> None:
        self._memo: dict[bytes, tuple[str, dict[str, str]]] = {}
        self._last: dict[str, tuple[dict, tuple[str, dict[str, str]]]] = {}
        self._size = size

    def __call__(self, metadata: dict, resource_id: str | None = None) -> tuple[str, dict[str, str]]:
        """(:func:`~streams.bridge.signing.nested_text` of ``resource_metadata``, its strings).

        Args:
            resource_id: the sample's ``resource_id`` when it is text: a hint only
                (a wrong one costs a miss, never a wrong answer).
        """
        if _native is not None and type(resource_id) is str:
            last = self._last.get(resource_id)
            if last is not None and _native.same_json(last[0], metadata):
                return last[1]
        key = marshal.dumps(metadata, 2)
        hit = self._memo.get(key)
        if hit is None:
            hit = (nested_text("resource_metadata", metadata), metadata_to_strings(metadata))
            if len(self._memo) >= self._size:
                self._memo.clear()
            self._memo[key] = hit
        if _native is not None and type(resource_id) is str:
            if len(self._last) >= self._size:
                self._last.clear()
            self._last[resource_id] = (metadata, hit)
        return hit


class CeilometerReader:
    """unwrap -> verify -> normalize, for one record value at a time.

    Args:
        verify: checks Ceilometer's signatures (:class:`~streams.bridge.signing.Verifier`).
        normalizer: the processor's unit, range and size rules (built from the
            same settings), applied here per sample so one bad sample never
            costs the other samples of its record downstream (the processor
            refuses a SampleBatch as a whole).
        limits: input limits.
    """

    def __init__(self, verify: Verifier, normalizer: Normalizer, limits: Limits = Limits()) -> None:
        self.verify = verify
        self.normalizer = normalizer
        self.limits = limits
        self.memo = MetadataMemo()
        self.fast = verify.signs  # orjson only where every message is then verified (see unwrap)

    def read(self, value: bytes | None, now_us: int | None = None) -> ReadResult:
        """Read one record value; never raises for bad input."""
        result = ReadResult()
        try:
            env = unwrap(value, self.limits, self.fast)  # type: ignore[arg-type]
        except RejectedMessage as exc:
            result.rejected.append((-1, exc))
            return result
        result.envelope = env
        exact = None
        for i, msg in enumerate(env.payload):
            try:
                try:
                    self._entry(i, msg, now_us, result, len(value))
                except RejectedMessage as exc:
                    if exc.stage != "verify" or env.text is None:
                        raise
                    exact = exact if exact is not None else exact_payload(env)
                    self._entry(i, exact[i], now_us, result, len(value))  # read exactly, verified again
            except RejectedMessage as exc:
                result.rejected.append((i, exc))
            except RecursionError:
                result.rejected.append((i, RejectedMessage("limits", "too_deep", f"payload[{i}] nests too deep")))
            except (TypeError, ValueError, OverflowError) as exc:
                # A value no field allows that slipped past the checks: a list where a string belongs, an
                # integer no float can hold, a lone surrogate Ceilometer could not have signed (UnicodeError).
                result.rejected.append((i, RejectedMessage(
                    "normalize", "bad_field", f"payload[{i}]: {type(exc).__name__}: {clip(str(exc))}")))
            except Exception as exc:  # noqa: BLE001 - a bug costs this entry, not the bridge
                log.exception("payload[%d] raised %s; dead-lettered", i, type(exc).__name__)
                result.rejected.append((i, RejectedMessage(
                    "normalize", "internal_error", f"payload[{i}]: {type(exc).__name__}: {clip(str(exc))}")))
        return result

    def _entry(self, i: int, msg: Any, now_us: int | None, result: ReadResult, size: int) -> None:
        """Verify and normalize payload entry ``i`` into ``result``.

        Raises:
            RejectedMessage: stages ``verify`` and ``normalize``.
        """
        if not isinstance(msg, dict):
            raise RejectedMessage("normalize", "unknown_message", f"payload[{i}] is not an object")
        is_sample = "counter_name" in msg
        if not is_sample and "traits" not in msg:
            raise RejectedMessage("normalize", "unknown_message",
                                  f"payload[{i}] is neither a metering message nor an event")
        metadata = msg.get("resource_metadata") if is_sample else None
        texts, strings = None, metadata_to_strings
        if type(metadata) is dict and metadata:
            text, known = self.memo(metadata, msg.get("resource_id"))
            texts, strings = {"resource_metadata": text}, lambda _: known
        if not self.verify(msg, texts):
            if not msg.get("message_signature"):
                raise RejectedMessage("verify", "unsigned", f"payload[{i}] {msg.get('message_id')!r} "
                                      "has no signature")
            raise RejectedMessage("verify", "bad_signature",
                                  f"payload[{i}] {msg.get('message_id')!r}: HMAC mismatch")
        if is_sample:
            # The record's size bounds every string in it: the normalizer checks string lengths only above it.
            result.samples.extend(self.normalizer.normalize([normalize_sample(msg, strings)], now_us, size))
        else:
            result.events.append(normalize_event(msg))
