"""The durable outbox: every planned message is a row before it is sent, every attempt is recorded.

A row is claimed (``FOR UPDATE SKIP LOCKED``, status ``sending``, a lease) in one transaction and
its outcome written in another. A crash between the two leaves it ``sending``; on restart (or when
its lease runs out) it is sent again with the same idempotency key, which the contract's HTTP SMS
gateway (``id``) and the webhook (``Idempotency-Key``) use to drop the repeat. For vendors without
an idempotency id (WeCom) that window — a crash after the vendor answered and before the commit —
is the only way a message can repeat.

A message is never abandoned while its alarm is unacknowledged (docs/contract.md §3): failures back off to
``retry_max`` and go on; after ``fallback_after`` failures the contact's next channel is planned
too (whichever delivers first supersedes the other); a rate-limit answer waits as told and is not a
failure; a contact left unreached for ``unreachable_after`` is reported to the park duty room — by
its own channels and as an ``unreachable`` alarm event the board shows. Messages of acknowledged
or closed alarms give up after ``give_up_after``; reminders and later steps of an acknowledged alarm
are cancelled before they are sent.

Two stores hold the rows: ``PgOutbox`` (the ``outbox`` table) while the database answers, and
``LocalOutbox`` (the local journal) while it does not; the flusher moves local rows into the table.
A row planned into the table but not yet claimed when the database goes away (``Unclaimed``), and a
failed attempt's retry, are kept in the journal too, so they go out during the outage, not after it.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from psycopg import AsyncConnection, AsyncCursor
from psycopg_pool import AsyncConnectionPool

from alerting.channels.base import Channel, OutMessage
from alerting.errors import ChannelError
from alerting.escalation import Planned, contact_id, message_key
from alerting.links import LinkSigner
from alerting.messages import Renderer
from alerting.metrics import AlertingMetrics
from park.db.pool import one_round_trip
from park.journal import Journal, LocalMessage
from park.model import Park
from park.site import Delivery
from park.types import LEVELS, to_shanghai

log = logging.getLogger("hazardwatch.alerting")

LINK_VALID = timedelta(days=3)
LEASE = timedelta(minutes=5)  # a claimed row not recorded this long (its worker died) is sent again
RATE_LIMIT_WAIT = 60.0  # seconds, when the vendor says "too many" without saying how long
STOPPABLE = ("then-", "repeat-")  # steps an acknowledgement cancels before they are sent
TIDY_EVERY = 1.0  # seconds (real time) between tidy-ups of the outbox before a claim


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int | None  # the outbox row (None: a row of the local journal)
    key: str
    alarm_id: int | None
    unit: str
    contact: str
    channel: str
    step: str
    payload: dict[str, Any]
    attempts: int
    failures: int = 0
    first_due: datetime | None = None
    settled: bool = False  # its alarm is acknowledged or closed (unknown while the database is away: False)

    @property
    def who(self) -> str:
        """The contact's identity (phone, WeCom user, robot) from the idempotency key."""
        parts = self.key.split("/")
        return parts[2] if len(parts) >= 5 else self.contact


@dataclass(frozen=True, slots=True)
class Decision:
    """What one attempt's outcome means for its row."""

    outcome: str  # sent | failed | rate_limited
    detail: str
    status: str  # sent | pending | failed
    retry_at: datetime | None
    failures: int
    fallback: bool


@dataclass(frozen=True, slots=True)
class Overdue:
    """A contact not reached for one step of one alarm within ``unreachable_after``."""

    alarm_id: int
    unit: str
    who: str
    contact: str
    step: str
    channel: str
    first_due: datetime
    payload: dict[str, Any] = field(default_factory=dict)


def decide(c: Claimed, error: BaseException | None, receipt: str, now: datetime, policy: Delivery) -> Decision:
    """The pure delivery policy: back-off, fallback, rate limits, giving up (only for settled alarms)."""
    if error is None:
        return Decision("sent", receipt, "sent", None, c.failures, False)
    if isinstance(error, ChannelError) and error.rate_limited:
        # a rate-limit answer is the vendor asking us to wait: not a failure, no fallback
        wait = error.retry_after or RATE_LIMIT_WAIT
        return Decision("rate_limited", str(error), "pending", now + timedelta(seconds=wait * random.uniform(1.0, 1.1)),
                        c.failures, False)
    detail = str(error) if isinstance(error, ChannelError) else f"{type(error).__name__}: {error}"
    failures = c.failures + 1
    permanent = isinstance(error, ChannelError) and error.permanent
    cap = policy.retry_max.total_seconds()
    hinted = error.retry_after if isinstance(error, ChannelError) else None
    backoff = min(cap, hinted if hinted else 2.0 ** failures) * random.uniform(0.5, 1.0)
    fallback = failures == policy.fallback_after or (permanent and failures <= policy.fallback_after)
    first = c.first_due or now
    if permanent or (c.settled and now - first > policy.give_up_after):
        # the same request will never succeed (or nobody waits for it any more); the fallback and the
        # unreachable report carry on for the contact
        return Decision("failed", detail, "failed", None, failures, fallback)
    return Decision("failed", detail, "pending", now + timedelta(seconds=backoff), failures, fallback)


def payload_of(p: Planned, park: Park, renderer: Renderer, signer: LinkSigner, public_url: str) -> dict[str, Any]:
    link = f"{public_url}/ack/{signer.sign(p.alarm_id, p.due_at + LINK_VALID, p.unit, p.address)}" \
        if p.alarm_id > 0 else ""
    r = renderer.render(p, link)
    ev = p.event
    alarm = {"id": ev.alarm_id, "enterprise": ev.enterprise, "enterprise_name": park.scope_name(ev.enterprise),
             "tag": ev.tag, "rule": ev.rule, "severity": ev.severity.value, "colour": ev.severity.colour_zh,
             "value": ev.value, "limit": ev.limit, "message": ev.message,
             "time": to_shanghai(ev.ts).strftime("%Y-%m-%d %H:%M:%S"), "link": link, "step": p.step}
    text = renderer.sms(r) if p.channel == "sms" else r.text
    return {"address": p.address, "level": p.level, "title": r.title, "text": text, "markdown": r.markdown,
            "alarm": alarm}


@dataclass(frozen=True, slots=True)
class Row:
    """A message as stored: what ``enqueue`` writes, in either store."""

    key: str
    alarm_id: int | None
    unit: str
    contact: str
    channel: str
    step: str
    payload: dict[str, Any]
    due_at: datetime
    status: str = "pending"  # or "held" (a flood message waiting for its summary)

    @classmethod
    def of(cls, p: Planned, payload: dict[str, Any], status: str = "pending") -> Row:
        return cls(p.key, p.alarm_id if p.alarm_id > 0 else None, p.unit, p.contact, p.channel, p.step, payload,
                   p.due_at, status)

    def doc(self) -> dict[str, Any]:
        return {"alarm_id": self.alarm_id, "unit": self.unit, "contact": self.contact, "channel": self.channel,
                "step": self.step, "payload": self.payload}


# --- every write of the outbox and notifications goes through these few functions ----------------
async def enqueue(conn: AsyncConnection, rows: Sequence[Row | tuple[Planned, dict[str, Any]]]) -> None:
    """Insert planned messages; one already planned (same idempotency key) is left alone.

    A later step or reminder of an alarm already acknowledged or closed is not planned at all: the
    acknowledgement is committed before the board shows it, so a tick that runs after it — even one
    whose in-memory escalation has not yet heard of it — cannot send one more message.

    No statement's answer is read here: inside :func:`park.db.pool.one_round_trip` the whole plan
    goes to the server in one round trip.
    """
    norm = [r if isinstance(r, Row) else Row.of(*r) for r in rows]
    for r in norm:
        stoppable = r.alarm_id is not None and r.step.startswith(STOPPABLE)
        await conn.execute(
            "INSERT INTO outbox (idempotency_key, alarm_id, unit_code, contact, channel, step, payload, due_at,"
            " first_due_at, status)"
            " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
            " WHERE NOT %s OR NOT EXISTS (SELECT 1 FROM alarms WHERE id = %s"
            "  AND (acked_at IS NOT NULL OR state = 'closed'))"
            " ON CONFLICT (idempotency_key) DO NOTHING",
            (r.key, r.alarm_id, r.unit, r.contact, r.channel, r.step,
             json.dumps(r.payload, ensure_ascii=False, default=str), r.due_at, r.due_at, r.status,
             stoppable, r.alarm_id),
        )
    await _raise_levels(conn, norm)


async def _raise_levels(conn: AsyncConnection, rows: Sequence[Row]) -> None:
    levels: dict[int, int] = {}
    for r in rows:
        lv = r.payload.get("level")
        if r.alarm_id is not None and r.status != "held" and lv in LEVELS and r.step not in ("cleared", "resolved") \
                and not r.step.startswith("unreachable"):
            levels[r.alarm_id] = max(levels.get(r.alarm_id, 0), LEVELS.index(lv))
    for alarm_id, lv in levels.items():
        await conn.execute(
            "UPDATE alarms SET escalation_level = %s WHERE id = %s AND (escalation_level IS NULL OR"
            " array_position(ARRAY['enterprise','town','district'], escalation_level) < %s)",
            (LEVELS[lv], alarm_id, lv + 1),
        )


async def record_attempt(conn: AsyncConnection, key: str, outbox_id: int | None, c: Claimed | dict[str, Any],
                         attempt: int, now: datetime, d: Decision) -> None:
    """One attempt into ``notifications`` and its outcome onto the outbox row (by id, else by key)."""
    f = c if isinstance(c, dict) else {"alarm_id": c.alarm_id, "unit": c.unit, "contact": c.contact,
                                       "channel": c.channel, "step": c.step}
    if outbox_id is None:
        cur = await conn.execute("SELECT id FROM outbox WHERE idempotency_key = %s", (key,))
        row = await cur.fetchone()
        outbox_id = row[0] if row else None
    # once per (message, attempt): a record whose commit acknowledgement was lost (the database gone at
    # that moment) is kept in the journal too, and must not become a second row when the flusher applies it
    await conn.execute(
        "INSERT INTO notifications (outbox_id, alarm_id, idempotency_key, unit_code, contact, channel, step,"
        " attempt, ts, outcome, detail) SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
        " WHERE NOT EXISTS (SELECT 1 FROM notifications WHERE alarm_id = %s AND idempotency_key = %s"
        " AND attempt = %s)",
        (outbox_id, f["alarm_id"], key, f["unit"], f["contact"], f["channel"], f["step"], attempt, now, d.outcome,
         d.detail[:1000], f["alarm_id"], key, attempt),
    )
    await conn.execute(
        "UPDATE outbox SET status = %s, failures = %s, due_at = coalesce(%s, due_at), claimed_at = NULL,"
        " sent_at = CASE WHEN %s = 'sent' THEN %s ELSE sent_at END WHERE id = %s AND status <> 'sent'",
        (d.status, d.failures, d.retry_at, d.status, now, outbox_id),
    )


async def record_event(conn: AsyncConnection, doc: dict[str, Any]) -> None:
    """An alerting event (a contact unreachable) into ``alarm_events``, and the board told."""
    await conn.execute(
        "INSERT INTO alarm_events (ts, alarm_id, kind, severity, by, message, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (doc["ts"], doc["alarm_id"], doc["kind"], doc.get("severity"), None, doc.get("message", ""),
         json.dumps(doc.get("detail", {}), ensure_ascii=False, default=str)),
    )
    await conn.execute("SELECT pg_notify('hazardwatch_alarms', %s)", (str(doc["alarm_id"]),))


async def upsert_local(conn: AsyncConnection, m: LocalMessage) -> None:
    """A message kept in the journal during an outage, into the outbox (the flusher's part)."""
    d = m.doc
    row = Row(m.key, d["alarm_id"], d["unit"], d["contact"], d["channel"], d["step"], d["payload"], m.first_due_at,
              m.status)
    await conn.execute(
        "INSERT INTO outbox (idempotency_key, alarm_id, unit_code, contact, channel, step, payload, due_at,"
        " first_due_at, status, attempts, failures, sent_at, reported_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (idempotency_key) DO UPDATE SET status = EXCLUDED.status,"
        "  attempts = greatest(outbox.attempts, EXCLUDED.attempts), failures = EXCLUDED.failures,"
        "  due_at = EXCLUDED.due_at, sent_at = coalesce(outbox.sent_at, EXCLUDED.sent_at),"
        "  reported_at = coalesce(outbox.reported_at, EXCLUDED.reported_at)"
        " WHERE outbox.status <> 'sent'",
        (m.key, row.alarm_id, row.unit, row.contact, row.channel, row.step,
         json.dumps(row.payload, ensure_ascii=False, default=str), m.due_at, m.first_due_at,
         "pending" if m.status == "sending" else m.status, m.attempts, m.failures, m.sent_at, m.reported_at),
    )
    await _raise_levels(conn, [row])


class Store(Protocol):
    async def enqueue(self, rows: Sequence[Row]) -> None: ...
    async def enqueue_and_claim(self, rows: Sequence[Row], now: datetime, limit: int) -> list[Claimed]: ...
    async def claim(self, now: datetime, limit: int = 50) -> list[Claimed]: ...
    async def record(self, c: Claimed, now: datetime, d: Decision, extra: Sequence[Row]) -> None: ...
    async def overdue(self, now: datetime, after: timedelta) -> list[Overdue]: ...
    async def report(self, o: Overdue, now: datetime, rows: Sequence[Row], event: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class _Owed:
    row: Row
    seq: int
    attempts: int = 0
    failures: int = 0
    first_due: datetime | None = None


class Unclaimed:
    """Messages this stage put into the ``outbox`` table as pending and has not yet claimed back.

    Between the two — milliseconds for a first notice, a retry's wait after a failed attempt — the
    database may go away, and the message would wait for it to return. ``hand_over`` copies them into
    the journal instead, under the same idempotency keys: they go out now, and when the flusher writes
    them back, the table's row is marked sent (``upsert_local``), so each is still sent once. A row the
    table held back (cancelled, superseded, refused for an acknowledged alarm) is forgotten when a
    claim that had room for every due row did not return it."""

    def __init__(self) -> None:
        self._owed: dict[str, _Owed] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._owed)

    def add(self, rows: Sequence[Row], attempts: int = 0, failures: int = 0,
            first_due: datetime | None = None) -> None:
        for r in rows:
            if r.status == "pending":
                self._seq += 1
                self._owed[r.key] = _Owed(r, self._seq, attempts, failures, first_due)

    def mark(self) -> int:
        """Taken before a claim: rows added after it may have been committed after the claim looked."""
        return self._seq

    def claimed(self, claimed: Sequence[Claimed], now: datetime, mark: int, complete: bool) -> None:
        for c in claimed:
            self._owed.pop(c.key, None)
        if complete:  # the claim had room for every due row: one not returned is not claimable
            for key in [k for k, o in self._owed.items() if o.seq <= mark and o.row.due_at <= now]:
                del self._owed[key]

    def hand_over(self, journal: Journal) -> int:
        """Into the journal (a message already there is left alone); returns how many."""
        n = sum(keep(journal, o.row, o.attempts, o.failures, o.first_due) for o in self._owed.values())
        self._owed.clear()
        return n


def keep(journal: Journal, row: Row, attempts: int = 0, failures: int = 0, first_due: datetime | None = None) -> bool:
    """A table row as a journal message (with its attempts so far); False if the journal had it already."""
    if not journal.put_message(row.key, row.doc(), row.due_at):
        return False
    if attempts or failures or first_due is not None:
        journal.update_message(row.key, attempts=attempts, failures=failures, first_due_at=first_due or row.due_at)
    return True


def retry_row(c: Claimed, d: Decision) -> Row:
    """A claimed message whose attempt failed, as the row its retry is (due when the policy says)."""
    assert d.retry_at is not None
    return Row(c.key, c.alarm_id, c.unit, c.contact, c.channel, c.step, c.payload, d.retry_at)


class PgOutbox:
    """The ``outbox`` table. What it was given as pending and has not yet handed out is in
    ``unclaimed``, for the journal if the database goes away."""

    def __init__(self, pool: AsyncConnectionPool, timeout: float = 5.0) -> None:
        self.pool = pool
        self.timeout = timeout
        self._tidied = -1e9  # monotonic time of the last tidy-up (cancel, supersede, expired leases)
        self.unclaimed = Unclaimed()

    async def enqueue(self, rows: Sequence[Row]) -> None:
        async with self.pool.connection(timeout=self.timeout) as conn, one_round_trip(conn):
            await enqueue(conn, rows)
        self.unclaimed.add(rows)

    async def recover(self) -> int:
        """At start: rows a previous run left ``sending`` go out again (with the same idempotency key)."""
        async with self.pool.connection(timeout=self.timeout) as conn:
            cur = await conn.execute("UPDATE outbox SET status = 'pending', claimed_at = NULL WHERE status = 'sending'")
            return cur.rowcount

    async def enqueue_and_claim(self, rows: Sequence[Row], now: datetime, limit: int) -> list[Claimed]:
        """:meth:`enqueue`, then :meth:`claim` in the same transaction and round trip: a new alarm's
        first notice is claimed as it is planned, not one commit later."""
        mark = self.unclaimed.mark()
        async with self.pool.connection(timeout=self.timeout) as conn, one_round_trip(conn):
            await enqueue(conn, rows)
            cur = await self._claim(conn, now, limit)
        got = await cur.fetchall()
        self.unclaimed.add(rows)  # after the mark: a row of these not returned stays owed until a claim says
        return self._claimed(got, now, mark, limit)

    async def claim(self, now: datetime, limit: int = 50) -> list[Claimed]:
        mark = self.unclaimed.mark()
        # the tidy-up and the claim in one round trip (rows read after it)
        async with self.pool.connection(timeout=self.timeout) as conn, one_round_trip(conn):
            if time.monotonic() - self._tidied >= TIDY_EVERY:
                await self._tidy(conn, now)
            cur = await self._claim(conn, now, limit)
        return self._claimed(await cur.fetchall(), now, mark, limit)

    def _claimed(self, rows: list[tuple[Any, ...]], now: datetime, mark: int, limit: int) -> list[Claimed]:
        claimed = [Claimed(*r) for r in sorted(rows, key=lambda r: r[0])]
        self.unclaimed.claimed(claimed, now, mark, complete=len(claimed) < limit)
        return claimed

    @staticmethod
    async def _claim(conn: AsyncConnection, now: datetime, limit: int) -> AsyncCursor[Any]:
        return await conn.execute(
                "UPDATE outbox o SET status = 'sending', attempts = attempts + 1, claimed_at = %s WHERE id IN ("
                " SELECT id FROM outbox p WHERE status = 'pending' AND due_at <= %s"
                # never a later step or reminder of an acknowledged alarm, tidied or not
                "  AND NOT ((p.step LIKE 'then-%%' OR p.step LIKE 'repeat-%%') AND EXISTS (SELECT 1 FROM alarms a"
                "   WHERE a.id = p.alarm_id AND (a.acked_at IS NOT NULL OR a.state = 'closed')))"
                # first notices before reminders and clear notices, so that a wave of reminders
                # never delays telling someone of a new alarm
                " ORDER BY (p.step LIKE 'repeat-%%' OR p.step IN ('cleared', 'resolved')), due_at, id"
                " FOR UPDATE SKIP LOCKED LIMIT %s)"
                " RETURNING id, idempotency_key, alarm_id, unit_code, contact, channel, step, payload, attempts,"
                " failures, first_due_at, coalesce((SELECT a.acked_at IS NOT NULL OR a.state = 'closed'"
                "  FROM alarms a WHERE a.id = o.alarm_id), true)",
                (now, now, limit),
            )

    async def _tidy(self, conn: AsyncConnection, now: datetime) -> None:
        # an acknowledgement stops later steps and reminders, even those already planned (enqueue
        # refuses new ones at once; this catches rows planned before the acknowledgement)
        await conn.execute(
            "UPDATE outbox o SET status = 'cancelled' FROM alarms a WHERE o.status = 'pending'"
            " AND o.alarm_id = a.id AND (a.acked_at IS NOT NULL OR a.state = 'closed')"
            " AND (o.step LIKE 'then-%%' OR o.step LIKE 'repeat-%%')")
        # one channel delivered this step to this contact: the other channel's copy is not needed
        await conn.execute(
            "UPDATE outbox o SET status = 'superseded' WHERE o.status = 'pending' AND o.alarm_id IS NOT NULL"
            " AND EXISTS (SELECT 1 FROM outbox s WHERE s.alarm_id = o.alarm_id AND s.step = o.step"
            "  AND s.status = 'sent' AND s.id <> o.id AND s.unit_code = o.unit_code"
            "  AND split_part(s.idempotency_key, '/', 3) = split_part(o.idempotency_key, '/', 3))")
        await conn.execute("UPDATE outbox SET status = 'pending', claimed_at = NULL"
                           " WHERE status = 'sending' AND claimed_at < %s", (now - LEASE,))
        self._tidied = time.monotonic()

    async def record(self, c: Claimed, now: datetime, d: Decision, extra: Sequence[Row]) -> None:
        async with self.pool.connection(timeout=self.timeout) as conn, one_round_trip(conn):
            await record_attempt(conn, c.key, c.id, c, c.attempts, now, d)
            if extra:
                await enqueue(conn, extra)
        self.unclaimed.add(extra)
        if d.status == "pending" and d.retry_at is not None:
            self.unclaimed.add([retry_row(c, d)], c.attempts, d.failures, c.first_due)

    async def overdue(self, now: datetime, after: timedelta) -> list[Overdue]:
        async with self.pool.connection(timeout=self.timeout) as conn:
            cur = await conn.execute(
                "WITH open AS (SELECT o.alarm_id, o.unit_code, split_part(o.idempotency_key, '/', 3) AS who,"
                "  o.contact, o.step, o.channel, o.first_due_at, o.payload"
                "  FROM outbox o JOIN alarms a ON a.id = o.alarm_id"
                "  WHERE o.status IN ('pending', 'sending', 'failed') AND o.reported_at IS NULL"
                "  AND o.first_due_at < %s AND o.step NOT LIKE 'unreachable%%' AND o.channel <> 'console'"
                "  AND a.acked_at IS NULL AND a.state <> 'closed')"
                " SELECT g.alarm_id, g.unit_code, g.who, min(g.contact), g.step, min(g.channel), min(g.first_due_at),"
                "  (array_agg(g.payload))[1] FROM open g GROUP BY g.alarm_id, g.unit_code, g.who, g.step"
                " HAVING NOT EXISTS (SELECT 1 FROM outbox s WHERE s.alarm_id = g.alarm_id AND s.step = g.step"
                "  AND s.unit_code = g.unit_code AND s.status = 'sent'"
                "  AND split_part(s.idempotency_key, '/', 3) = g.who)",
                (now - after,))
            return [Overdue(*r) for r in await cur.fetchall()]

    async def report(self, o: Overdue, now: datetime, rows: Sequence[Row], event: dict[str, Any]) -> None:
        async with self.pool.connection(timeout=self.timeout) as conn, conn.transaction():
            await conn.execute(
                "UPDATE outbox SET reported_at = %s WHERE alarm_id = %s AND unit_code = %s AND step = %s"
                " AND split_part(idempotency_key, '/', 3) = %s", (now, o.alarm_id, o.unit, o.step, o.who))
            await enqueue(conn, rows)
            await record_event(conn, event)
        self.unclaimed.add(rows)

    async def fold_held(self, fold: Callable[[list[Row]], list[Row]]) -> int:
        """Held flood messages → summaries, in one transaction (held rows are durable, not memory)."""
        async with self.pool.connection(timeout=self.timeout) as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT idempotency_key, alarm_id, unit_code, contact, channel, step, payload, due_at, status"
                " FROM outbox WHERE status = 'held' ORDER BY id FOR UPDATE")
            held = [Row(*r) for r in await cur.fetchall()]
            if not held:
                return 0
            summaries = fold(held)
            await enqueue(conn, summaries)
            await conn.execute("UPDATE outbox SET status = 'folded' WHERE idempotency_key = ANY(%s)",
                               ([r.key for r in held],))
        self.unclaimed.add(summaries)
        return len(held)


class LocalOutbox:
    """The local journal's messages, while the database is away. Attempts become journal entries."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def enqueue(self, rows: Sequence[Row]) -> None:
        for r in rows:
            if self.journal.put_message(r.key, r.doc(), r.due_at) and r.status != "pending":
                self.journal.update_message(r.key, status=r.status)

    async def enqueue_and_claim(self, rows: Sequence[Row], now: datetime, limit: int) -> list[Claimed]:
        """Only :meth:`enqueue`: the journal's messages are claimed by the sender's own look."""
        await self.enqueue(rows)
        return []

    async def claim(self, now: datetime, limit: int = 50) -> list[Claimed]:
        out = []
        for m in self.journal.due_messages(now, limit):
            self.journal.update_message(m.key, status="sending", attempts=m.attempts + 1)
            d = m.doc
            out.append(Claimed(None, m.key, d["alarm_id"], d["unit"], d["contact"], d["channel"], d["step"],
                               d["payload"], m.attempts + 1, m.failures, m.first_due_at, False))
        return out

    async def record(self, c: Claimed, now: datetime, d: Decision, extra: Sequence[Row]) -> None:
        if c.id is None:
            self.journal.update_message(c.key, status=d.status, failures=d.failures,
                                        due_at=d.retry_at or now, sent_at=now if d.status == "sent" else None)
        elif d.status == "pending" and d.retry_at is not None:
            # claimed from the table, failed, and the database gone since: the retry is kept here,
            # so it goes out during the outage (the table's row is marked when the flusher writes it)
            keep(self.journal, retry_row(c, d), c.attempts, d.failures, c.first_due)
        self.journal.append("attempt", {"key": c.key, "outbox_id": c.id, "alarm_id": c.alarm_id, "unit": c.unit,
                                        "contact": c.contact, "channel": c.channel, "step": c.step,
                                        "attempt": c.attempts, "ts": now, "outcome": d.outcome, "detail": d.detail,
                                        "status": d.status, "retry_at": d.retry_at, "failures": d.failures})
        await self.enqueue(extra)

    async def overdue(self, now: datetime, after: timedelta) -> list[Overdue]:
        groups: dict[tuple[int, str, str, str], list[LocalMessage]] = {}
        for m in self.journal.messages():
            d = m.doc
            if d["alarm_id"] is None or d["step"].startswith("unreachable") or d["channel"] == "console":
                continue
            who = m.key.split("/")[2]
            groups.setdefault((d["alarm_id"], d["unit"], who, d["step"]), []).append(m)
        out = []
        for (alarm_id, unit, who, step), ms in groups.items():
            if any(m.status == "sent" or m.reported_at is not None for m in ms):
                continue
            first = min(m.first_due_at for m in ms)
            if first < now - after:
                m0 = ms[0]
                out.append(Overdue(alarm_id, unit, who, m0.doc["contact"], step, m0.doc["channel"], first,
                                   m0.doc["payload"]))
        return out

    async def report(self, o: Overdue, now: datetime, rows: Sequence[Row], event: dict[str, Any]) -> None:
        for m in self.journal.messages():
            if m.doc["alarm_id"] == o.alarm_id and m.doc["unit"] == o.unit and m.doc["step"] == o.step \
                    and m.key.split("/")[2] == o.who:
                self.journal.update_message(m.key, reported_at=now)
        await self.enqueue(rows)
        self.journal.append("event", event)


async def apply_attempt(conn: AsyncConnection, doc: dict[str, Any]) -> None:
    """A journal ``attempt`` entry into ``notifications`` and the outbox row (the flusher's part)."""
    d = Decision(doc["outcome"], doc["detail"], doc["status"], doc["retry_at"], doc["failures"], False)
    await record_attempt(conn, doc["key"], doc["outbox_id"], doc, doc["attempt"], doc["ts"], d)


class OutboxWorker:
    """Sends claimed messages and records every attempt; see the module docstring for the policy."""

    def __init__(self, channels: Mapping[str, Channel], park: Park, metrics: AlertingMetrics,
                 redact: Callable[[str], str] = lambda s: s) -> None:
        self.channels = channels
        self.park = park
        self.metrics = metrics
        self.policy = park.site.channels.delivery
        self.redact = redact

    async def send(self, c: Claimed, now: datetime) -> Decision:
        """Send one claimed message; the decision for its row (nothing recorded yet)."""
        p = c.payload
        ch = self.channels.get(c.channel)
        t0 = time.perf_counter()
        error: BaseException | None = None
        receipt = ""
        try:
            if ch is None:
                raise ChannelError(c.channel, "channel not configured", permanent=True)
            address = p.get("address", "")
            if c.channel == "wecom_robot":  # the robot key lives in the site file, never in the outbox
                unit = self.park.units.get(c.unit)
                address = unit.robot_key if unit and unit.robot_key else ""
            receipt = await ch.send(OutMessage(c.key, c.contact, address, p.get("title", ""), p.get("text", ""),
                                               p.get("markdown", ""), p.get("alarm", {})))
        except Exception as e:  # a channel bug must not stop the worker: it counts as a failed attempt
            error = e
        d = decide(c, error, receipt, now, self.policy)
        d = Decision(d.outcome, self.redact(d.detail), d.status, d.retry_at, d.failures, d.fallback)
        self.metrics.send_seconds.labels(c.channel).observe(time.perf_counter() - t0)
        self.metrics.attempts.labels(c.channel, d.outcome).inc()
        if d.outcome != "sent":
            log.warning("%s to %s (%s) %s, attempt %d: %s", c.channel, c.contact, c.unit, d.outcome, c.attempts,
                        d.detail)
        return d

    def fallback_rows(self, c: Claimed, now: datetime) -> list[Row]:
        """After repeated failure, the same message on the contact's next channel."""
        unit = self.park.units.get(c.unit)
        if unit is None:
            return []
        for contact in unit.contacts:
            if contact_id(contact) != c.who:
                continue
            chans = [str(x) for x in contact.channels]
            if c.channel not in chans or chans.index(c.channel) + 1 >= len(chans):
                return []
            ch = chans[chans.index(c.channel) + 1]
            address = contact.phone if ch == "sms" else (contact.wecom_user or "")
            payload = dict(c.payload) | {"address": address or ""}
            key = message_key(c.alarm_id or 0, c.unit, c.who, ch, c.step)
            return [Row(key, c.alarm_id, c.unit, c.contact, ch, c.step, payload, now)]
        return []
