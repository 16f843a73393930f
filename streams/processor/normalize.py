"""Normalization: one canonical unit per quantity, and sanity checks on every sample.

Applied to every decoded sample before transformers and storage:

* Units: byte quantities become ``B`` and sub-second times become ``ns``
  (:data:`UNIT_SCALE`). Prefixes are binary, as in Ceilometer's own meters
  (its ``memory.usage`` in "MB" is libvirt KiB / 1024), so ``MB`` and ``MiB``
  both scale by 2**20. Units not in the table (``%``, ``ns``, ``B``,
  ``request``...) pass unchanged.
* Time: ``timestamp`` must be a positive number of microseconds since the
  epoch (UTC by contract) and not further in the future than
  ``max_future_skew`` seconds.
* Values: ``volume`` must be finite; ``message_id``, ``name`` and
  ``resource_id`` must be non-empty.

A record (one Kafka message) is accepted or rejected as a whole, like its
signature: one bad sample sends the record to the dead-letter topic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from streams.codec import RejectedMessage, Sample

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


class Normalizer:
    """Validates and converts samples in place.

    Args:
        max_future_skew: seconds a timestamp may be ahead of this host's clock.
        unit_scale: unit conversions (default :data:`UNIT_SCALE`).
    """

    def __init__(self, max_future_skew: float = 3600.0,
                 unit_scale: Mapping[str, tuple[str, float]] = UNIT_SCALE) -> None:
        self.max_future_skew_us = int(max_future_skew * 1e6)
        self.unit_scale = dict(unit_scale)

    def normalize(self, samples: list[Sample], now_us: int | None = None) -> list[Sample]:
        """Normalize ``samples`` (modified in place) and return them.

        Raises:
            RejectedMessage: stage ``normalize``; reasons ``empty_field``,
                ``non_finite_volume``, ``bad_timestamp``, ``empty_batch``.
        """
        if not samples:
            raise RejectedMessage("normalize", "empty_batch", "record carries no samples")
        latest = (now_us if now_us is not None else time.time_ns() // 1000) + self.max_future_skew_us
        scale = self.unit_scale
        for s in samples:
            if not (s["message_id"] and s["name"] and s["resource_id"]):
                raise RejectedMessage("normalize", "empty_field",
                                      f"sample {s['message_id']!r}: message_id, name and resource_id are required")
            vol = s["volume"]
            if not math.isfinite(vol):
                raise RejectedMessage("normalize", "non_finite_volume",
                                      f"sample {s['message_id']}: volume {vol!r}")
            ts = s["timestamp"]
            if ts <= 0 or ts > latest:
                raise RejectedMessage("normalize", "bad_timestamp",
                                      f"sample {s['message_id']}: timestamp {ts} us is out of range")
            conv = scale.get(s["unit"])
            if conv is not None:
                s["unit"] = conv[0]
                s["volume"] = vol * conv[1]
        return samples
