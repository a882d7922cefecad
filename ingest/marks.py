"""Backfill marks waiting to be written: pure, no IO.

A mark says that a sensor's readings from ``start`` to ``end`` (epoch µs) arrived as a backfill
(store-and-forward, 断点续传), ``n`` of them, the newest arriving at ``received``; the board shades
them in the sensor's chart (``reading_backfills``). Marks are secondary to the readings: the
ingest stage adds them after the commit that stored their readings and writes them later, in bulk,
off the commit path (:class:`ingest.service.IngestService`).

Pending marks are coalesced per sensor — one span from the oldest to the newest late reading that
arrived since the last write — so what waits in memory, and what one write costs, is bounded by the
sensors backfilling, never by the readings: a backlog spread over a registry of 440,000 sensors
writes at most one row per sensor per interval instead of one per sensor per write transaction.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

MARK = np.dtype([("sid", np.int32), ("start", np.int64), ("end", np.int64), ("received", np.int64),
                 ("n", np.int64)])
COMPACT_AT = 100_000  # pending rows before they are coalesced in place (then at least twice what is left)


def empty() -> npt.NDArray[np.void]:
    return np.empty(0, MARK)


def coalesce(marks: npt.NDArray[np.void]) -> npt.NDArray[np.void]:
    """One mark per sensor, in sensor order: the union of its spans, the newest arrival, the count."""
    if len(marks) < 2:
        return marks.copy()
    m = marks[np.argsort(marks["sid"], kind="stable")]
    sid = m["sid"]
    first = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    out = np.empty(len(first), MARK)
    out["sid"] = sid[first]
    out["start"] = np.minimum.reduceat(m["start"], first)
    out["end"] = np.maximum.reduceat(m["end"], first)
    out["received"] = np.maximum.reduceat(m["received"], first)
    out["n"] = np.add.reduceat(m["n"], first)
    return out


class PendingMarks:
    """Marks added since the last :meth:`take`; memory bounded by the sensors marked, not the readings."""

    def __init__(self, compact_at: int = COMPACT_AT) -> None:
        self._parts: list[npt.NDArray[np.void]] = []
        self._rows = 0
        self._base = compact_at
        self._compact_at = compact_at

    def __len__(self) -> int:
        """Rows held (before coalescing: several may be one sensor's)."""
        return self._rows

    def add(self, marks: npt.NDArray[np.void]) -> None:
        if not len(marks):
            return
        self._parts.append(marks)
        self._rows += len(marks)
        if self._rows > self._compact_at and len(self._parts) > 1:
            whole = coalesce(np.concatenate(self._parts))
            self._parts, self._rows = [whole], len(whole)
            self._compact_at = max(self._base, 2 * len(whole))

    def take(self) -> npt.NDArray[np.void]:
        """Everything pending, one mark per sensor; the accumulator is left empty (:meth:`add` them back
        if writing them fails)."""
        if not self._parts:
            return empty()
        whole = coalesce(np.concatenate(self._parts)) if len(self._parts) > 1 else coalesce(self._parts[0])
        self._parts, self._rows, self._compact_at = [], 0, self._base
        return whole
