"""The rule stage as a service: readings from ingest → the pure core → the database → alerting.

One lock serialises the core: batches, ticks and operator commands each run the core, persist
what it decided in one transaction, then hand the events to alerting with their alarm ids.

Alarms never wait for the database. A new alarm takes its id from a reserve drawn from the
``alarms`` id sequence while the database answers; when a commit fails (or the gate is already
down) the transitions go to the local journal — durable, in order — and on to alerting at once;
the flusher writes them into the database when it returns. Operator commands are different: they
need the database to be their record, so during an outage they raise ``Unavailable`` at once
(the API answers 503) and leave the core as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import deque
from dataclasses import replace
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from park.clock import Clock
from park.db.pool import one_round_trip
from park.errors import Unavailable
from park.health import Health
from park.journal import DbGate, Flusher, is_transient
from park.model import Park
from park.site import EnterpriseState
from park.types import (
    AlarmEvent,
    AlarmEventKind,
    BrokerState,
    GatewayClock,
    GatewayStatus,
    ReadingBatch,
    Severity,
)
from rules.engine import RuleEngine
from rules.lifecycle import Alarm, Transition
from rules.metrics import RulesMetrics
from rules.store import load_open, load_state, message, persist, persist_statements, save_clocks, save_state

log = logging.getLogger("hazardwatch.rules")
# what ingest hands over: readings, gateway status, and (where ingest measures them) gateway clocks
Inbox = (asyncio.Queue[ReadingBatch | GatewayStatus] | asyncio.Queue[ReadingBatch | GatewayStatus | GatewayClock]
         | asyncio.Queue[ReadingBatch | GatewayStatus | GatewayClock | BrokerState])
TICK_MAX = 5.0  # seconds between ticks at the most
STAGE = "rules"
ID_RESERVE = 200  # alarm ids kept in hand for an outage; refilled below half while the database answers
CLOCKS_EVERY = 5.0  # seconds between writes of measured gateway clock offsets (for the API and board)
DB_TIMEOUT = 2.0  # seconds a commit may wait for a connection before the journal takes over
UNAVAILABLE = "数据库暂时不可用，操作未执行，请稍后重试（database unavailable; nothing was changed, retry shortly）"


class RulesService:
    def __init__(self, *, park: Park, pool: AsyncConnectionPool, clock: Clock,
                 inbox: Inbox, outbox: asyncio.Queue[AlarmEvent] | None,
                 registry: CollectorRegistry, gate: DbGate | None = None, health: Health | None = None) -> None:
        self.park = park
        self.pool = pool
        self.clock = clock
        self.inbox = inbox
        self.outbox = outbox
        self.metrics = RulesMetrics(registry)
        self.engine = RuleEngine(park)
        self.gate = gate
        self.health = health or Health()
        self.health.register(STAGE)
        self._lock = asyncio.Lock()
        self._ids: deque[int] = deque()
        self.restored = asyncio.Event()
        self._clocks: dict[str, GatewayClock] = {}  # measured offsets not yet written

    async def restore(self) -> int:
        """Load open alarms (and enterprise states) so a restart raises nothing twice."""
        async with self.pool.connection() as conn:
            alarms = await load_open(conn)
            cur = await conn.execute("SELECT code, state FROM units WHERE level = 'enterprise'")
            states = {r[0]: EnterpriseState(r[1]) for r in await cur.fetchall()}
            await self._refill(conn)
        self.engine.ent_state.update({k: v for k, v in states.items() if k in self.engine.ent_state})
        self.engine.restore(alarms)
        await self._restore_learned()
        self.metrics.open.set(len(self.engine.alarms))
        self.restored.set()
        return len(alarms)

    async def _refill(self, conn: Any) -> None:
        if len(self._ids) >= ID_RESERVE // 2:
            return
        cur = await conn.execute("SELECT nextval(pg_get_serial_sequence('alarms', 'id')) FROM generate_series(1, %s)",
                                 (ID_RESERVE - len(self._ids),))
        self._ids.extend(int(r[0]) for r in await cur.fetchall())

    async def run(self) -> None:
        if not self.restored.is_set():  # an in-process restart keeps the core it has
            n = await self.restore()
            log.info("rules running: %d sensors, %d open alarms restored", len(self.park.sensors), n)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._snapshot_loop(), name="rules-snapshot")
                tg.create_task(self._clocks_loop(), name="rules-clocks")
                await self._judge_loop()
        finally:
            await self._final_snapshot()

    async def _judge_loop(self) -> None:
        next_tick = time.monotonic()
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            item = None
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
                # that lands as the item arrives, and the stage would never stop
                async with asyncio.timeout(timeout):
                    item = await self.inbox.get()
            except TimeoutError:
                pass
            if item is not None:
                async with self._lock:
                    t0 = time.perf_counter()
                    if isinstance(item, ReadingBatch):
                        out = self.engine.on_batch(item, self.clock.now())
                        self.metrics.readings.inc(len(item))
                    elif isinstance(item, BrokerState):
                        out = self.engine.on_broker(item)
                    elif isinstance(item, GatewayClock):
                        out = self.engine.on_clock(item)
                        self._clocks[item.enterprise] = item
                        self.metrics.clock_offset.labels(item.enterprise).set(item.offset_s)
                    else:
                        # a status message carries no time of its own: judge it on this stage's clock,
                        # like every other time-based rule
                        out = self.engine.on_status(replace(item, ts=self.clock.now()))
                    self.metrics.judge_seconds.observe(time.perf_counter() - t0)
                    await self._commit(out)
            if time.monotonic() >= next_tick:
                await self.tick()
                wake = self.engine.next_wakeup(self.clock.now())
                next_tick = time.monotonic() + min(TICK_MAX, max(0.05, (wake - self.clock.now()).total_seconds()))

    # --- learned state: snapshots at a steady cadence and on shutdown ---------------------------
    async def _restore_learned(self) -> None:
        try:
            async with self.pool.connection(timeout=10) as conn:
                blobs = await load_state(conn)
        except Exception as e:  # learned state is a head start, never a reason not to judge
            log.warning("could not load the rule stage's learned state (%s); starting without it", e)
            return
        parts = self.engine.restore_snapshot(blobs)
        if parts:
            log.info("learned state restored: %s", ", ".join(parts))

    async def snapshot(self) -> bool:
        """Save the learned state now; False (and a retry at the next cadence) if the database is away."""
        async with self._lock:
            blobs = self.engine.snapshot()  # fast: arrays to bytes; judging waits only for this
        try:
            async with self.pool.connection(timeout=5) as conn, conn.transaction():
                await save_state(conn, blobs, self.clock.now())
        except Exception as e:
            self.metrics.snapshots.labels("failed").inc()
            log.warning("saving the rule stage's learned state failed (%s); retrying at the next cadence", e)
            return False
        self.metrics.snapshots.labels("saved").inc()
        self.metrics.snapshot_bytes.set(sum(len(b) for b in blobs.values()))
        return True

    async def _snapshot_loop(self) -> None:
        every = self.park.site.alarm_management.snapshot_every.total_seconds()
        while True:
            await asyncio.sleep(every)
            await self.snapshot()

    async def save_clocks(self) -> bool:
        """Write the gateway clock offsets measured since the last write; False (kept for the next
        round) if the database is away. A clock is a display, never a reason to hold up judging."""
        if not self._clocks:
            return True
        clocks, self._clocks = self._clocks, {}
        try:
            async with self.pool.connection(timeout=5) as conn, conn.transaction():
                await save_clocks(conn, list(clocks.values()))
        except Exception as e:
            self._clocks = clocks | self._clocks  # newer measurements meanwhile win
            log.warning("saving gateway clock offsets failed (%s); retrying shortly", e)
            return False
        return True

    async def _clocks_loop(self) -> None:
        while True:
            await asyncio.sleep(CLOCKS_EVERY)
            await self.save_clocks()

    async def _final_snapshot(self) -> None:
        try:
            async with asyncio.timeout(5):
                await self.save_clocks()
                await self.snapshot()
        except (TimeoutError, asyncio.CancelledError):
            log.warning("no learned-state snapshot at shutdown: the database did not answer in time")

    async def tick(self) -> None:
        async with self._lock:
            await self._commit(self.engine.on_tick(self.clock.now()))
            await self._recover()

    async def _recover(self) -> None:
        """Degraded with nothing to commit: look at the database, so the stage recovers by itself
        rather than at its next alarm (which may be hours away)."""
        if self.health.register(STAGE).ok or (self.gate is not None and not self.gate.up):
            return  # well, or the journal's flusher is the one to find the database back
        try:
            async with self.pool.connection(timeout=DB_TIMEOUT) as conn:
                await conn.execute("SELECT 1")
        except Exception as e:
            if not is_transient(e):
                raise
            return
        self.health.ok(STAGE, self.clock.now())

    def _assign_ids(self, out: list[Transition]) -> set[int]:
        fresh: set[int] = set()
        for t in out:
            a = t.alarm
            if a.alarm_id is None and a.rule != "flood" and self._ids:
                self.engine.bind(a, self._ids.popleft())
                fresh.add(a.alarm_id)  # type: ignore[arg-type]
        return fresh

    async def _store(self, out: list[Transition], fresh: set[int]) -> None:
        async with self.pool.connection(timeout=DB_TIMEOUT) as conn:
            async with one_round_trip(conn):  # an alarm on its way to a phone: one round trip
                await persist_statements(conn, out, self.engine.bind, fresh)
            await self._refill(conn)

    async def _commit(self, out: list[Transition]) -> None:
        """Record ``out`` (database, else journal) and hand it to alerting; never waits out an outage."""
        if not out:
            return
        now = self.clock.now()
        fresh = self._assign_ids(out)
        stored = False
        if self.gate is None or self.gate.up:
            try:
                await self._store(out, fresh)
                stored = True
                self.health.ok(STAGE, now)
            except Exception as e:
                if not is_transient(e):
                    raise
                self._down(e, len(out))
        if not stored:
            if self.gate is None or any(t.alarm.alarm_id is None and t.alarm.rule != "flood" for t in out):
                # no journal, or the id reserve ran dry during a long outage: wait for the database
                await self._wait_and_store(out, fresh)
            else:
                async with self.gate.lock:
                    if self.gate.up:  # the flusher emptied the journal meanwhile: straight to the database
                        await self._wait_and_store(out, fresh)
                    else:
                        self.gate.journal.append("alarms", journal_doc(out, fresh))
        for t in out:
            self.metrics.transitions.labels(t.kind.value, t.alarm.rule).inc()
            if self.outbox is not None:
                await self.outbox.put(to_event(t, now))
        self.metrics.open.set(len(self.engine.alarms))

    def _down(self, e: BaseException, n: int) -> None:
        self.metrics.db_errors.inc()
        log.warning("storing %d alarm transitions failed (%s: %s)", n, type(e).__name__, e)
        self.health.degraded(STAGE, f"database unavailable: {type(e).__name__}", self.clock.now())
        if self.gate is not None:
            self.gate.close(f"rules: {type(e).__name__}", self.clock.now())

    async def _wait_and_store(self, out: list[Transition], fresh: set[int]) -> None:
        delay = 0.2
        while True:
            try:
                await self._store(out, fresh)
                self.health.ok(STAGE, self.clock.now())
                return
            except Exception as e:
                if not is_transient(e):
                    raise
                self._down(e, len(out))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(5.0, delay * 2)

    async def _command(self, alarms: list[Alarm], run: Any, extra_sql: tuple[str, tuple[Any, ...]] | None = None,
                       undo: Any = None) -> None:
        """An operator command: the database is its record, so it never goes to the journal.

        Down (or failing now) → ``Unavailable`` at once, and the core is put back as it was."""
        if self.gate is not None and not self.gate.up:
            raise Unavailable("database", UNAVAILABLE)
        saved = [(a, _copy_alarm(a), a.key in self.engine.alarms) for a in alarms]
        keys_before = set(self.engine.alarms)
        out: list[Transition] = run()
        try:
            fresh = self._assign_ids(out)
            async with self.pool.connection(timeout=DB_TIMEOUT) as conn, conn.transaction():
                if extra_sql is not None:
                    await conn.execute(*extra_sql)
                await persist(conn, out, self.engine.bind, fresh)
        except Exception as e:
            for a, old, was_open in saved:  # as if the command had never run
                for f in dataclasses.fields(Alarm):
                    setattr(a, f.name, getattr(old, f.name))
                if was_open:
                    self.engine.alarms[a.key] = a
                    if a.alarm_id is not None:
                        self.engine.by_id[a.alarm_id] = a
            for key in set(self.engine.alarms) - keys_before:  # raised by the command: never happened
                gone = self.engine.alarms.pop(key)
                if gone.alarm_id is not None:
                    self.engine.by_id.pop(gone.alarm_id, None)
            if undo is not None:
                undo()
            if not is_transient(e):
                raise
            self._down(e, len(out))
            raise Unavailable("database", UNAVAILABLE) from None
        for t in out:
            self.metrics.transitions.labels(t.kind.value, t.alarm.rule).inc()
            if self.outbox is not None:
                await self.outbox.put(to_event(t, self.clock.now()))
        self.metrics.open.set(len(self.engine.alarms))

    # --- operator commands --------------------------------------------------------------------
    def _one(self, alarm_id: int) -> list[Alarm]:
        a = self.engine.by_id.get(alarm_id)
        return [a] if a is not None else []

    async def ack(self, alarm_id: int, by: str, note: str | None = None) -> None:
        async with self._lock:
            await self._command(self._one(alarm_id), lambda: self.engine.ack(alarm_id, by, self.clock.now(), note))

    async def resolve(self, alarm_id: int, by: str, cause: str, action: str) -> None:
        async with self._lock:
            await self._command(self._one(alarm_id),
                                lambda: self.engine.resolve(alarm_id, by, self.clock.now(), cause, action))

    async def shelve(self, alarm_id: int, by: str, reason: str, until: datetime) -> None:
        async with self._lock:
            await self._command(self._one(alarm_id),
                                lambda: self.engine.shelve(alarm_id, by, self.clock.now(), reason, until))

    async def unshelve(self, alarm_id: int, by: str) -> None:
        async with self._lock:
            await self._command(self._one(alarm_id), lambda: self.engine.unshelve(alarm_id, by, self.clock.now()))

    async def set_enterprise_state(self, enterprise: str, state: EnterpriseState, by: str) -> None:
        async with self._lock:
            now = self.clock.now()
            before = self.engine.ent_state.get(enterprise)

            def undo() -> None:
                if before is not None:
                    self.engine.ent_state[enterprise] = before

            await self._command(
                [a for a in self.engine.alarms.values() if a.enterprise == enterprise],
                lambda: self.engine.set_enterprise_state(enterprise, state, now),
                ("UPDATE units SET state = %s, state_since = %s, state_by = %s WHERE code = %s",
                 (state.value, now, by, enterprise)), undo)


def register_flush(flusher: Flusher) -> None:
    """The rule stage's journal entries (alarm transitions) are written first, before alerting's."""
    flusher.on_entry("alarms", apply_journal, phase=1)


def _copy_alarm(a: Alarm) -> Alarm:
    return dataclasses.replace(a, detail=dict(a.detail))


def journal_doc(out: list[Transition], fresh: set[int]) -> dict[str, Any]:
    """Transitions as they are now (the alarm's state included), for the journal."""
    ts = []
    for t in out:
        d = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name != "alarm"}
        d["alarm"] = {f.name: getattr(t.alarm, f.name) for f in dataclasses.fields(Alarm)}
        ts.append(d)
    return {"transitions": ts, "fresh": sorted(fresh)}


def _enum(name: str, v: Any) -> Any:
    if name == "kind" and isinstance(v, str):
        return AlarmEventKind(v)
    if name == "severity" and isinstance(v, str):
        return Severity(v)
    return v


async def apply_journal(conn: Any, doc: dict[str, Any]) -> None:
    """A journal ``alarms`` entry into ``alarms`` / ``alarm_events`` (the flusher's part)."""
    out = []
    for d in doc["transitions"]:
        alarm = Alarm(**{k: _enum(k, v) for k, v in d["alarm"].items()})
        out.append(Transition(alarm=alarm, **{k: _enum(k, v) for k, v in d.items() if k != "alarm"}))

    def bind(a: Alarm, alarm_id: int) -> None:
        a.alarm_id = alarm_id

    await persist(conn, out, bind, set(doc["fresh"]))


def to_event(t: Transition, noticed_at: datetime | None = None) -> AlarmEvent:
    """The event as alerting gets it: the alarm as it was at this transition, its sentence rendered.

    ``noticed_at`` stands in where the core did not stamp the transition (hazardwatch's own time)."""
    a = t.alarm
    return AlarmEvent(
        alarm_id=a.alarm_id or 0, kind=t.kind, ts=t.ts, enterprise=a.enterprise, rule=a.rule, severity=t.severity,
        sensor_id=a.sensor_id, tag=a.tag, value=t.value, limit=t.limit, message=message(t), by=t.by,
        flood=a.flood, detail=dict(t.facts) | dict(t.detail) | {"state": t.state},
        noticed_at=t.noticed_at or noticed_at,
    )
