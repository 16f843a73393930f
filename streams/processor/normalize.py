"""Normalization: one canonical unit per quantity, and sanity checks on every sample.

Applied to every decoded sample before transformers and storage:

* Units: byte quantities become ``B`` and sub-second times become ``ns``
  (:data:`UNIT_SCALE`). Prefixes are binary, as in Ceilometer's own meters
  (its ``memory.usage`` in "MB" is libvirt KiB / 1024), so ``MB`` and ``MiB``
  both scale by 2**20. Units not in the table (``%``, ``ns``, ``B``,
  ``request``...) pass unchanged.
* Time: ``timestamp`` must be a positive number of microseconds since the
  epoch (UTC by contract), not further in the future than
  ``max_future_skew`` seconds, and not older than ``max_sample_age``
  seconds (reason ``too_old``; by default the storage retention, so a
  sample is never accepted only to vanish by TTL).
* Values: ``volume`` must be finite *after* unit conversion (``1e300 TiB``
  overflows to ``inf B``); ``message_id``, ``name`` and ``resource_id`` must
  be non-empty.
* One resource per record: every sample has the first one's ``resource_id``
  (reason ``mixed_resources``), since the record's key, its partition and its
  per-resource state are that resource's.
* Limits (:class:`~streams.codec.RecordLimits`): at most ``metadata_entries``
  metadata entries per sample; strings of at most ``string_chars``
  characters, checked only for records larger than that, since no string of
  a smaller record can exceed it.

A record (one Kafka message) is accepted or rejected as a whole, like its
signature: one bad sample sends the record to the dead-letter topic.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Mapping, Sequence

from streams.codec import RecordLimits, RejectedMessage, Sample
from streams.columns import SampleColumns

UNIT_SCALE: Mapping[str, tuple[str, float]] = {
    "KiB": ("B", 2**10),
    "MiB": ("B", 2**20),
    "GiB": ("B", 2**30),
    "TiB": ("B", 2**40),
    "KB": ("B", 2**10),
    "MB": ("B", 2**20),
    "GB": ("B", 2**30),
    "TB": ("B", 2**40),
    "us": ("ns", 1e3),
    "ms": ("ns", 1e6),
}
"""unit -> (canonical unit, factor). Binary prefixes, as Ceilometer uses them."""


_STRING_FIELDS = ("message_id", "name", "unit", "resource_id", "user_id", "user_name", "project_id",
                  "project_name", "source", "message_signature")


class Normalizer:
    """Validates and converts samples in place.

    Args:
        max_future_skew: seconds a timestamp may be ahead of this host's clock.
        unit_scale: unit conversions (default :data:`UNIT_SCALE`).
        max_sample_age: seconds a timestamp may be behind this host's clock; 0 = no limit.
        limits: metadata and string limits (default :class:`~streams.codec.RecordLimits`).
    """

    def __init__(self, max_future_skew: float = 3600.0,
                 unit_scale: Mapping[str, tuple[str, float]] = UNIT_SCALE,
                 max_sample_age: float = 0.0, limits: RecordLimits | None = None) -> None:
        self.max_future_skew_us = int(max_future_skew * 1e6)
        self.max_sample_age_us = int(max_sample_age * 1e6)
        self.unit_scale = dict(unit_scale)
        self.limits = limits or RecordLimits()

    def normalize(self, samples: list[Sample], now_us: int | None = None, record_bytes: int = 0) -> list[Sample]:
        """Normalize ``samples`` (modified in place) and return them.

        Args:
            samples: the decoded samples of one record.
            now_us: this host's time, µs (default: now).
            record_bytes: size of the record they came from; string lengths are
                checked only when it exceeds ``limits.string_chars``.

        Raises:
            RejectedMessage: stage ``normalize``; reasons ``empty_batch``, ``empty_field``,
                ``mixed_resources``, ``bad_timestamp``, ``too_old``, ``non_finite_volume``,
                ``too_many_metadata``, ``string_too_long``.
        """
        if not samples:
            raise RejectedMessage("normalize", "empty_batch", "record carries no samples")
        now = now_us if now_us is not None else time.time_ns() // 1000
        latest = now + self.max_future_skew_us
        oldest = now - self.max_sample_age_us if self.max_sample_age_us else 0
        scale = self.unit_scale
        max_md = self.limits.metadata_entries
        rid = samples[0]["resource_id"]
        if record_bytes > self.limits.string_chars:
            self._check_strings(samples)
        for s in samples:
            if not (s["message_id"] and s["name"] and s["resource_id"]):
                raise RejectedMessage("normalize", "empty_field",
                                      f"sample {s['message_id']!r}: message_id, name and resource_id are required")
            if s["resource_id"] != rid:
                raise RejectedMessage("normalize", "mixed_resources",
                                      f"samples of {rid!r} and {s['resource_id']!r} in one record")
            ts = s["timestamp"]
            if ts <= 0 or ts > latest:
                raise RejectedMessage("normalize", "bad_timestamp",
                                      f"sample {s['message_id']}: timestamp {ts} us is out of range")
            if ts < oldest:
                raise RejectedMessage("normalize", "too_old",
                                      f"sample {s['message_id']}: timestamp {ts} us is older than the "
                                      f"{self.max_sample_age_us / 86_400e6:g}-day limit (processor.max_sample_age)")
            md = s.get("resource_metadata")
            if md and len(md) > max_md:
                raise RejectedMessage("normalize", "too_many_metadata",
                                      f"sample {s['message_id']}: {len(md)} metadata entries; the limit is {max_md}")
            conv = scale.get(s["unit"])
            if conv is not None:
                s["unit"] = conv[0]
                s["volume"] = s["volume"] * conv[1]
            vol = s["volume"]
            if not math.isfinite(vol):
                raise RejectedMessage("normalize", "non_finite_volume",
                                      f"sample {s['message_id']}: volume {vol!r} {s['unit']}")
        return samples

    def _check_strings(self, samples: list[Sample]) -> None:
        limit = self.limits.string_chars
        for s in samples:
            for f in _STRING_FIELDS:
                v = s.get(f)
                if v is not None and len(v) > limit:
                    raise RejectedMessage("normalize", "string_too_long",
                                          f"sample field {f}: {len(v)} characters; the limit is {limit}")
            for k, v in (s.get("resource_metadata") or {}).items():
                if len(k) > limit or len(v) > limit:
                    raise RejectedMessage("normalize", "string_too_long",
                                          f"metadata entry {k[:64]!r}: {max(len(k), len(v))} characters; "
                                          f"the limit is {limit}")

    def normalize_columns(self, cols: SampleColumns, spans: Sequence[tuple[int, int]],
                          record_bytes: Sequence[int], now_us: int | None = None) -> dict[int, RejectedMessage]:
        """:meth:`normalize` for a whole batch held as columns: the same rules, checked a column at a
        time (builtins over whole lists), unit conversions applied in place.

        Args:
            cols: the batch's samples.
            spans: per record, its rows ``(start, end)`` in ``cols``, in order.
            record_bytes: per record, its size (string lengths are checked only above the limit).

        Returns:
            span index -> why that record is rejected (first failing rule, in :meth:`normalize`'s
            order); its rows must be dropped by the caller. Mixed resources and keys are the
            caller's (:class:`~streams.processor.stages.RecordProcessor`).
        """
        bad: dict[int, RejectedMessage] = {}
        if not spans:
            return bad
        starts = [s for s, _ in spans]

        def span_of(row: int) -> int:
            return bisect_right(starts, row) - 1

        def reject(row: int, reason: str, detail: str) -> None:
            k = span_of(row)
            if k not in bad:
                bad[k] = RejectedMessage("normalize", reason, detail)

        for k, (start, end) in enumerate(spans):
            if start == end:
                bad[k] = RejectedMessage("normalize", "empty_batch", "record carries no samples")
        mids, names, units, vols, rids, stamps, mkeys = (cols.message_id, cols.name, cols.unit, cols.volume,
                                                         cols.resource_id, cols.timestamp, cols.metadata_keys)
        if not (all(mids) and all(names) and all(rids)):
            for i in range(len(mids)):
                if not (mids[i] and names[i] and rids[i]):
                    reject(i, "empty_field", f"sample {mids[i]!r}: message_id, name and resource_id are required")
        now = now_us if now_us is not None else time.time_ns() // 1000
        latest = now + self.max_future_skew_us
        oldest = now - self.max_sample_age_us if self.max_sample_age_us else 1
        if stamps and not (min(stamps) >= max(oldest, 1) and max(stamps) <= latest):
            for i, ts in enumerate(stamps):
                if ts <= 0 or ts > latest:
                    reject(i, "bad_timestamp", f"sample {mids[i]}: timestamp {ts} us is out of range")
                elif ts < oldest:
                    reject(i, "too_old", f"sample {mids[i]}: timestamp {ts} us is older than the "
                           f"{self.max_sample_age_us / 86_400e6:g}-day limit (processor.max_sample_age)")
        max_md = self.limits.metadata_entries
        if mkeys and max(map(len, mkeys)) > max_md:
            for i, keys in enumerate(mkeys):
                if len(keys) > max_md:
                    reject(i, "too_many_metadata",
                           f"sample {mids[i]}: {len(keys)} metadata entries; the limit is {max_md}")
        limit = self.limits.string_chars
        for k, size in enumerate(record_bytes):
            if size > limit and k not in bad:
                start, end = spans[k]
                try:
                    self._check_strings(cols.rows(range(start, end)))
                except RejectedMessage as exc:
                    bad[k] = exc
        scale = self.unit_scale
        if not scale.keys().isdisjoint(units):
            for i, unit in enumerate(units):
                conv = scale.get(unit)
                if conv is not None:
                    units[i] = conv[0]
                    vols[i] = vols[i] * conv[1]
        if not all(map(math.isfinite, vols)):
            for i, vol in enumerate(vols):
                if not math.isfinite(vol):
                    reject(i, "non_finite_volume", f"sample {mids[i]}: volume {vol!r} {units[i]}")
        return bad
