"""The local journal: the commit of record while the database is away.

An SQLite file in the service's data directory (WAL, ``synchronous=FULL``: every write is on disk
before the call returns, so a message is never sent before what it is about is durable). The rule
stage appends its alarm transitions here, and alerting its planned messages and delivery attempts,
when the database does not answer; when it returns, the service writes everything into the
database in order — each entry once, recorded in ``journal_applied`` in the same transaction — and
removes it here.

``DbGate`` is the one switch every stage reads: while it is down (the journal holds entries not yet
in the database) new work goes to the journal, never straight to the database, so the order of
events is kept. Only the flusher, having emptied the journal under the gate's lock, opens it.
Nothing here imports a stage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("hazardwatch.journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    key TEXT PRIMARY KEY, body TEXT NOT NULL, due_at REAL NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, first_due_at REAL NOT NULL,
    sent_at REAL, reported_at REAL);
"""


def _ts(d: datetime | None) -> float | None:
    return d.timestamp() if d is not None else None


def _dt(x: float | None) -> datetime | None:
    return datetime.fromtimestamp(x, UTC) if x is not None else None


def dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, default=_default)


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        return {"$dt": o.isoformat()}
    if hasattr(o, "item") and callable(o.item):  # a numpy scalar among an alarm's facts
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def loads(text: str) -> Any:
    return json.loads(text, object_hook=lambda d: datetime.fromisoformat(d["$dt"]) if set(d) == {"$dt"} else d)


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    kind: str
    doc: dict[str, Any]

    def applied_key(self, journal_id: str) -> str:
        return f"{journal_id}:{self.seq}"


@dataclass(slots=True)
class LocalMessage:
    """A planned message kept in the journal while the database is away (the outbox's local twin)."""

    key: str
    doc: dict[str, Any]
    due_at: datetime
    status: str
    attempts: int
    failures: int
    first_due_at: datetime
    sent_at: datetime | None
    reported_at: datetime | None


class Journal:
    """Append-only entries and keyed messages in one SQLite file; every write is durable on return."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync before a write returns: sent only once on disk
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE name = 'id'").fetchone()
        if row is None:
            self.id = uuid.uuid4().hex
            self._db.execute("INSERT INTO meta (name, value) VALUES ('id', ?)", (self.id,))
        else:
            self.id = str(row[0])

    def close(self) -> None:
        self._db.close()

    # --- entries (alarm transitions, delivery attempts, events) --------------------------------
    def append(self, kind: str, doc: dict[str, Any]) -> int:
        cur = self._db.execute("INSERT INTO entries (kind, body) VALUES (?, ?)", (kind, dumps(doc)))
        return int(cur.lastrowid or 0)

    def entries(self) -> list[Entry]:
        return [Entry(int(s), str(k), loads(b)) for s, k, b in
                self._db.execute("SELECT seq, kind, body FROM entries WHERE kind NOT LIKE 'dead:%' ORDER BY seq")]

    def remove(self, seqs: Iterable[int]) -> None:
        self._db.executemany("DELETE FROM entries WHERE seq = ?", [(s,) for s in seqs])

    def set_aside(self, seq: int, kind: str) -> None:
        """An entry the database refused for good: kept in the file for a person, no longer flushed."""
        self._db.execute("UPDATE entries SET kind = ? WHERE seq = ?", (f"dead:{kind}", seq))

    # --- messages --------------------------------------------------------------------------------
    def put_message(self, key: str, doc: dict[str, Any], due_at: datetime) -> bool:
        """Keep a planned message; one already kept under ``key`` is left alone (False)."""
        cur = self._db.execute(
            "INSERT INTO messages (key, body, due_at, first_due_at) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (key, dumps(doc), due_at.timestamp(), due_at.timestamp()))
        return cur.rowcount == 1

    def due_messages(self, now: datetime, limit: int = 50) -> list[LocalMessage]:
        rows = self._db.execute(
            "SELECT key, body, due_at, status, attempts, failures, first_due_at, sent_at, reported_at FROM messages"
            " WHERE status = 'pending' AND due_at <= ?"
            # first notices before reminders and clear notices (the key ends with the step)
            " ORDER BY (key LIKE '%/repeat-%' OR key LIKE '%/cleared' OR key LIKE '%/resolved'), due_at, rowid"
            " LIMIT ?", (now.timestamp(), limit))
        return [self._msg(r) for r in rows]

    def messages(self, statuses: tuple[str, ...] | None = None) -> list[LocalMessage]:
        q = "SELECT key, body, due_at, status, attempts, failures, first_due_at, sent_at, reported_at FROM messages"
        args: tuple[Any, ...] = ()
        if statuses:
            q += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            args = statuses
        return [self._msg(r) for r in self._db.execute(q + " ORDER BY rowid", args)]

    def update_message(self, key: str, **fields: Any) -> None:
        conv = {k: (_ts(v) if isinstance(v, datetime) else v) for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in conv)
        self._db.execute(f"UPDATE messages SET {sets} WHERE key = ?", (*conv.values(), key))

    def requeue_sending(self) -> int:
        """Messages left ``sending`` by a delivery that was stopped mid-way (a term's stages cancelled,
        the process killed) go back to ``pending``: they are sent again with the same idempotency key.
        Call only while no delivery from the journal is in flight. Returns how many."""
        cur = self._db.execute("UPDATE messages SET status = 'pending' WHERE status = 'sending'")
        return int(cur.rowcount)

    def remove_messages(self, keys: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM messages WHERE key = ?", [(k,) for k in keys])

    @staticmethod
    def _msg(r: tuple[Any, ...]) -> LocalMessage:
        due, first = _dt(r[2]), _dt(r[6])
        assert due is not None and first is not None
        return LocalMessage(str(r[0]), loads(r[1]), due, str(r[3]), int(r[4]), int(r[5]), first, _dt(r[7]),
                            _dt(r[8]))

    def __len__(self) -> int:
        (n,) = self._db.execute("SELECT (SELECT count(*) FROM entries WHERE kind NOT LIKE 'dead:%')"
                                " + (SELECT count(*) FROM messages)").fetchone()
        return int(n)


class DbGate:
    """Whether stages write to the database (up) or to the journal (down).

    ``lock`` serialises journal appends with the flusher's last pass, so nothing slips into the
    journal after it was found empty and before the gate opened.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.up = len(journal) == 0
        self.lock = asyncio.Lock()
        self.changed = asyncio.Event()
        self.down_since: datetime | None = None

    def close(self, reason: str, now: datetime) -> None:
        if self.up:
            log.warning("database unavailable (%s): alarms and messages go to the local journal %s",
                        reason, self.journal.path.name)
            self.down_since = now
        self.up = False
        self.changed.set()

    def open(self) -> None:
        if not self.up:
            log.warning("database back: the local journal is written into it and emptied")
        self.up = True
        self.down_since = None
        self.changed.set()


def is_transient(e: BaseException) -> bool:
    """A database or network fault worth waiting out (not a bug, not bad SQL)."""
    import psycopg
    from psycopg_pool import PoolTimeout, TooManyRequests

    if isinstance(e, psycopg.errors.QueryCanceled | psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow):
        return True
    return isinstance(e, psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout | TooManyRequests
                      | OSError | TimeoutError)


Applier = Callable[[Any, dict[str, Any]], Awaitable[None]]


class Flusher:
    """Writes the journal into the database when it answers again, then opens the gate.

    Stages register what they journal: ``on_entry(kind, apply, phase)`` for entries (applied in
    journal order within a phase, each in its own transaction with its ``journal_applied`` row) and
    ``on_messages(apply)`` for kept messages (between phase 1 and 2: alarms first, then the messages
    about them, then the attempts to send them). An entry that fails for a reason other than the
    database being away is a bug: it is logged with its traceback and set aside (kind ``dead:…``,
    kept in the file) so one bad entry cannot hold every later alarm back.
    """

    def __init__(self, gate: DbGate, pool: Any) -> None:
        self.gate = gate
        self.pool = pool
        self.appliers: dict[str, tuple[int, Applier]] = {}
        self.message_appliers: list[Callable[[Any, LocalMessage], Awaitable[None]]] = []
        self.flushed = 0

    def on_entry(self, kind: str, apply: Applier, phase: int = 1) -> None:
        self.appliers[kind] = (phase, apply)

    def on_messages(self, apply: Callable[[Any, LocalMessage], Awaitable[None]]) -> None:
        self.message_appliers.append(apply)

    async def run(self, retry_min: float = 0.25, retry_max: float = 5.0) -> None:
        """Forever: whenever the gate is down, flush with capped, jittered back-off until it opens."""
        delay = retry_min
        while True:
            if self.gate.up:
                self.gate.changed.clear()
                await self.gate.changed.wait()
                delay = retry_min
                continue
            try:
                await self.flush()
                if not self.gate.up:  # something was in flight: look again shortly
                    await asyncio.sleep(retry_min)
                delay = retry_min
            except Exception as e:
                if not is_transient(e):
                    raise
                log.debug("journal flush: database still away (%s)", e)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(retry_max, delay * 2)

    async def flush(self) -> int:
        """Write everything kept, then (under the gate's lock, with nothing left) open the gate."""
        async with self.pool.connection(timeout=5) as conn:
            await conn.execute("SELECT 1")
        n = await self._pass()
        async with self.gate.lock:
            n += await self._pass()
            if len(self.gate.journal) == 0:
                self.gate.open()
        self.flushed += n
        if n:
            log.warning("journal flushed: %d entries and messages written into the database", n)
        return n

    async def _pass(self) -> int:
        j = self.gate.journal
        n = 0
        entries = j.entries()
        for phase in (1, 2):
            if phase == 2:
                for m in j.messages():
                    if m.status == "sending":
                        continue  # in flight now: its record comes with the next pass
                    async with self.pool.connection(timeout=5) as conn, conn.transaction():
                        for apply_m in self.message_appliers:
                            await apply_m(conn, m)
                    j.remove_messages([m.key])
                    n += 1
            for e in entries:
                ph, apply = self.appliers.get(e.kind, (0, None))
                if ph != phase or apply is None:
                    continue
                try:
                    async with self.pool.connection(timeout=5) as conn, conn.transaction():
                        cur = await conn.execute(
                            "INSERT INTO journal_applied (entry) VALUES (%s) ON CONFLICT DO NOTHING",
                            (e.applied_key(j.id),))
                        if cur.rowcount:
                            await apply(conn, e.doc)
                except Exception as ex:
                    if is_transient(ex):
                        raise
                    log.error("journal entry %d (%s) could not be written; set aside", e.seq, e.kind, exc_info=True)
                    j.set_aside(e.seq, e.kind)
                    continue
                j.remove([e.seq])
                n += 1
        return n
