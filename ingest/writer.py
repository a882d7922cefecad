"""Writing readings exactly once, fast: binary COPY built with numpy, duplicates resolved by the database.

The common case — no (sensor, ts) seen before — is one binary ``COPY`` straight into ``readings``
inside a savepoint. A reading twice in one batch or one already stored makes that COPY fail on
the primary key; a batch with a reading twice is then written by a second COPY with each reading
once, and one meeting stored readings through a staging table with ``ON CONFLICT DO NOTHING``. Rejected
input and gateway status changes are written in the same transaction, so one commit covers
everything the acknowledged messages carried. Backfill marks (which readings arrived late, for the
board) are not: they are written later, in bulk, by :func:`write_marks` (see :mod:`ingest.marks`).

Blocking on purpose: the ingest stage runs each transaction in a worker thread with a connection
of its own, so the COPY stream keeps flowing to the server while the event loop is busy judging
readings (libpq sends and waits without holding the GIL).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt
from psycopg import Connection, errors

from ingest.decode import Reject
from park.types import GatewayStatus, ReadingBatch

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix µs: binary timestamptz counts from there
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TRAILER = struct.pack("!h", -1)
_ROW = np.dtype([
    ("n", ">i2"),
    ("l_ts", ">i4"), ("ts", ">i8"),
    ("l_sid", ">i4"), ("sid", ">i4"),
    ("l_val", ">i4"), ("val", ">f8"),
    ("l_q", ">i4"), ("q", ">i2"),
])
COPY_READINGS = "COPY readings (ts, sensor_id, value, quality) FROM STDIN (FORMAT BINARY)"
_MARK_ROW = np.dtype([
    ("n", ">i2"),
    ("l_sid", ">i4"), ("sid", ">i4"),
    ("l_a", ">i4"), ("a", ">i8"),
    ("l_b", ">i4"), ("b", ">i8"),
    ("l_rx", ">i4"), ("rx", ">i8"),
    ("l_k", ">i4"), ("k", ">i4"),
])
COPY_MARKS = "COPY reading_backfills (sensor_id, start_ts, end_ts, received_at, n) FROM STDIN (FORMAT BINARY)"


def copy_payload(batch: ReadingBatch) -> bytes:
    """The batch as one PostgreSQL binary COPY stream (ts, sensor_id, value, quality)."""
    rows = np.empty(len(batch), dtype=_ROW)
    rows["n"] = 4
    rows["l_ts"], rows["l_sid"], rows["l_val"], rows["l_q"] = 8, 4, 8, 2
    rows["ts"] = batch.ts_us - _PG_EPOCH_US
    rows["sid"] = batch.sensor_id
    rows["val"] = batch.value
    rows["q"] = batch.quality
    return _HEADER + rows.tobytes() + _TRAILER


def write_batch(conn: Connection, batch: ReadingBatch | None, rejects: Sequence[Reject],
                statuses: Sequence[GatewayStatus], received_at: datetime) -> int:
    """One transaction holding everything some messages carried; returns the readings new to the table."""
    with conn.transaction():
        new = write_readings(conn, batch)[0] if batch is not None else 0
        write_rejects(conn, rejects, received_at)
        write_statuses(conn, statuses)
    return new


def marks_payload(marks: npt.NDArray[np.void]) -> bytes:
    """Backfill marks (:data:`ingest.marks.MARK`) as one binary COPY stream for ``reading_backfills``."""
    rows = np.empty(len(marks), dtype=_MARK_ROW)
    rows["n"] = 5
    rows["l_sid"], rows["l_a"], rows["l_b"], rows["l_rx"], rows["l_k"] = 4, 8, 8, 8, 4
    rows["sid"] = marks["sid"]
    rows["a"] = marks["start"] - _PG_EPOCH_US
    rows["b"] = marks["end"] - _PG_EPOCH_US
    rows["rx"] = marks["received"] - _PG_EPOCH_US
    rows["k"] = np.minimum(marks["n"], 2**31 - 1)
    return _HEADER + rows.tobytes() + _TRAILER


def write_marks(conn: Connection, marks: npt.NDArray[np.void]) -> None:
    """Backfill marks in a transaction of their own: never on the readings' commit path, so their
    cost is paid once per sensor per interval, not once per sensor per write (ingest.marks)."""
    if not len(marks):
        return
    with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_MARKS) as cp:
        cp.write(marks_payload(marks))


def write_readings(conn: Connection, batch: ReadingBatch) -> tuple[int, bool]:
    """Store ``batch`` inside the caller's transaction; return (rows new, whether duplicates were met)."""
    if len(batch) == 0:
        return 0, False
    data = copy_payload(batch)
    if _copy(conn, data):
        return len(batch), False
    once = first_of_each(batch)
    if once is not None:  # a reading twice in the batch (two messages, one detector and instant)
        data = copy_payload(once)
        if _copy(conn, data):
            return len(once), True
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _readings_stage"
            " (ts timestamptz, sensor_id integer, value double precision, quality smallint)"
        )
        cur.execute("TRUNCATE _readings_stage")
        with cur.copy(COPY_READINGS.replace("readings", "_readings_stage", 1)) as cp:
            cp.write(data)
        cur.execute(
            "INSERT INTO readings (ts, sensor_id, value, quality)"
            " SELECT DISTINCT ON (sensor_id, ts) ts, sensor_id, value, quality FROM _readings_stage"
            " ON CONFLICT (sensor_id, ts) DO NOTHING"
        )
        return cur.rowcount, True


def _copy(conn: Connection, data: bytes) -> bool:
    """COPY straight into ``readings`` in a savepoint: False, and nothing written, on a duplicate key."""
    try:
        with conn.transaction():  # a savepoint: a duplicate undoes only this COPY
            with conn.cursor() as cur, cur.copy(COPY_READINGS) as cp:
                cp.write(data)
        return True
    except errors.UniqueViolation:
        return False


def first_of_each(batch: ReadingBatch) -> ReadingBatch | None:
    """The batch with each (sensor, ts) once, its first arrival kept; None if none comes twice.

    Sorting costs milliseconds per 50,000 readings, so it is done only after a COPY met a
    duplicate key: a batch merged from messages that carry one detector's reading at one instant
    twice is then stored by a second COPY, not by the slower staging table."""
    order = np.lexsort((batch.ts_us, batch.sensor_id))  # stable: equal keys keep their arrival order
    sid, ts = batch.sensor_id[order], batch.ts_us[order]
    again = np.zeros(len(batch), dtype=bool)
    again[order[1:]] = (sid[1:] == sid[:-1]) & (ts[1:] == ts[:-1])
    if not again.any():
        return None
    keep = ~again
    return ReadingBatch(batch.sensor_id[keep], batch.ts_us[keep], batch.value[keep], batch.quality[keep],
                        batch.received_us)


def write_rejects(conn: Connection, rejects: Sequence[Reject], received_at: object) -> None:
    if not rejects:
        return
    with conn.cursor() as cur, cur.copy(
        "COPY rejects (received_at, topic, reason, detail, payload, payload_bytes) FROM STDIN"
    ) as cp:
        for r in rejects:
            cp.write_row((received_at, r.topic[:512], r.reason.value, r.detail, r.payload,
                                r.size if r.payload is not None else None))


def write_statuses(conn: Connection, statuses: Sequence[GatewayStatus]) -> None:
    for s in statuses:
        conn.execute(
            "INSERT INTO gateway_events (ts, enterprise_code, online) VALUES (%s, %s, %s)",
            (s.ts, s.enterprise, s.online),
        )
        conn.execute(
            "INSERT INTO gateway_status (enterprise_code, online, since, updated_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (enterprise_code) DO UPDATE SET"
            "  since = CASE WHEN gateway_status.online = EXCLUDED.online THEN gateway_status.since"
            "               ELSE EXCLUDED.since END,"
            "  online = EXCLUDED.online, updated_at = EXCLUDED.updated_at"
            " WHERE gateway_status.updated_at <= EXCLUDED.updated_at",
            (s.enterprise, s.online, s.ts, s.ts),
        )
