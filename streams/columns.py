"""Samples as columns: the processor's in-memory shape of a batch.

The processor's outputs are ClickHouse columns, and most samples go to
storage unchanged (every pipeline stores raw samples; transformers and alarms
see a few meters). So a batch is decoded straight into one list per field
(:class:`SampleColumns`, the order of :data:`FIELDS`), checked column-wise,
and handed to the sink as columns; a sample becomes a dict
(:meth:`SampleColumns.row`, the ``streams.Sample`` shape) only where a
transformer, an alarm or a non-storage publisher needs one.

Decoding uses the C extension ``streams._columns`` (built from
``streams/_columns.c`` when the package is installed). Without it, the same
columns are filled from cavro's dicts (correct, about half as fast), and a
warning says so once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

FIELDS = ("message_id", "name", "type", "unit", "volume", "user_id", "user_name", "project_id", "project_name",
          "resource_id", "timestamp", "monotonic_time", "metadata_keys", "metadata_values", "source",
          "message_signature")
"""Column order; ``metadata_keys``/``metadata_values`` hold one list per sample (``resource_metadata``)."""

_PLAIN = FIELDS[:12]
_REQUIRED = frozenset(("message_id", "name", "type", "unit", "volume", "resource_id", "timestamp"))

try:
    from streams._columns import decode_samples as _decode_samples
    from streams._columns import extend_from_dicts as _extend_from_dicts
    from streams._columns import sample_row as _sample_row
except ImportError:  # pragma: no cover - the extension is built by pip install
    _decode_samples = _extend_from_dicts = _sample_row = None


def extend_from_dicts(cols: Sequence[list], samples: Iterable[dict[str, Any]]) -> None:
    """Append ``samples`` (``streams.Sample`` dicts) to ``cols``, the first 15 or all 16 columns of
    :data:`FIELDS`: required fields as they are, optional ones None when missing, ``resource_metadata``
    as its keys and values (two new lists), ``source`` '' when missing or None.

    In C where every sample is an exact dict with the required fields (about three times faster,
    ``streams._columns.extend_from_dicts``), else the Python loop here.

    Raises:
        KeyError: a sample lacks message_id, name, type, unit, volume, resource_id or timestamp
            (columns before the missing one may have been extended: callers drop the batch).
    """
    batch = samples if isinstance(samples, list) else list(samples)
    if _extend_from_dicts is not None and _extend_from_dicts(cols, batch):
        return
    for k, f in enumerate(_PLAIN):
        cols[k].extend([s[f] for s in batch] if f in _REQUIRED else [s.get(f) for s in batch])
    mds = [s.get("resource_metadata") or {} for s in batch]
    cols[12].extend([list(md) for md in mds])
    cols[13].extend([list(md.values()) for md in mds])
    cols[14].extend([s.get("source") or "" for s in batch])
    if len(cols) > 15:
        cols[15].extend([s.get("message_signature") for s in batch])


class SampleColumns:
    """Samples of a batch, one list per field (:data:`FIELDS`), in record order.

    Attributes:
        cols: the 16 lists (a tuple), aligned: row ``i`` of every list is sample ``i``.
    """

    __slots__ = ("cols",)

    def __init__(self, cols: tuple[list, ...] | None = None) -> None:
        self.cols = cols if cols is not None else tuple([] for _ in FIELDS)

    def __len__(self) -> int:
        return len(self.cols[0])

    def __getattr__(self, name: str) -> list:
        try:
            return self.cols[FIELDS.index(name)]
        except ValueError:
            raise AttributeError(name) from None

    def truncate(self, n: int) -> None:
        """Drop every row from ``n`` on (undoes a partly decoded record)."""
        for c in self.cols:
            del c[n:]

    def take(self, rows: Sequence[int]) -> SampleColumns:
        """A new :class:`SampleColumns` of ``rows`` (indices, in the order given)."""
        return SampleColumns(tuple([c[i] for i in rows] for c in self.cols))

    def row(self, i: int) -> dict[str, Any]:
        """Sample ``i`` as a ``streams.Sample`` dict (a new dict; changing it changes no column).

        Built in C when the extension is there (``streams._columns.sample_row``, the same dict).

        Raises:
            IndexError: no row ``i``.
        """
        if _sample_row is not None:
            return _sample_row(self.cols, i)
        (mid, name, typ, unit, vol, uid, uname, pid, pname, rid, ts, mono, mkeys, mvals, src, sig) = self.cols
        # A dict display: about 30 % faster than a comprehension over FIELDS (one per transformed sample).
        return {"message_id": mid[i], "name": name[i], "type": typ[i], "unit": unit[i], "volume": vol[i],
                "user_id": uid[i], "user_name": uname[i], "project_id": pid[i], "project_name": pname[i],
                "resource_id": rid[i], "timestamp": ts[i], "monotonic_time": mono[i],
                "resource_metadata": dict(zip(mkeys[i], mvals[i], strict=True)), "source": src[i],
                "message_signature": sig[i]}

    def rows(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """Samples at ``indices`` as dicts (:meth:`row`)."""
        return [self.row(i) for i in indices]

    def extend_dicts(self, samples: Iterable[dict[str, Any]]) -> None:
        """Append samples given as ``streams.Sample`` dicts (e.g. a transformer's outputs); see
        :func:`extend_from_dicts`."""
        extend_from_dicts(self.cols, samples)

    def extend(self, other: SampleColumns, rows: Sequence[int] | None = None) -> None:
        """Append ``other``'s rows (all, or ``rows``)."""
        for mine, theirs in zip(self.cols, other.cols, strict=True):
            mine.extend(theirs if rows is None else [theirs[i] for i in rows])


def decode_samples(body: bytes, pos: int, columns: SampleColumns, fallback: Any = None) -> int:
    """Append the samples array of a ``streams.SampleBatch`` body at ``pos`` to ``columns``.

    Args:
        body: the record's bytes (the whole single-object encoding is fine).
        pos: offset of the samples array (after the key id).
        fallback: ``decode(body) -> dict`` of the whole body from its start (cavro), used when
            the C extension is missing; ``body`` must then start at the Avro body.

    Returns:
        how many samples were appended.

    Raises:
        ValueError: malformed input (the columns are left as they were).
    """
    before = len(columns)
    try:
        if _decode_samples is not None:
            count, _ = _decode_samples(body, pos, columns.cols)
            return count
        if fallback is None:
            raise ValueError("no columnar decoder and no fallback")
        samples = fallback(body)["samples"]
        columns.extend_dicts(samples)
        return len(samples)
    except Exception:
        columns.truncate(before)
        raise


def warn_if_slow() -> None:
    """Log once that the C decoder is missing (the package was installed without building it)."""
    if _decode_samples is None:
        log.warning("streams._columns is not built: decoding samples through dicts (about half as fast); "
                    "reinstall the package with a C compiler (pip install -e .)")
