"""The rule stage as a service: readings from ingest → the pure core → the database → alerting.

One lock serialises the core: batches, ticks and operator commands each run the core, persist
what it decided in one transaction (retried while the database is away), then hand the events
to alerting with their alarm ids.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import replace
from datetime import datetime

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from park.clock import Clock
from park.model import Park
from park.site import EnterpriseState
from park.types import AlarmEvent, GatewayClock, GatewayStatus, ReadingBatch
from rules.engine import RuleEngine
from rules.lifecycle import Transition
from rules.metrics import RulesMetrics
from rules.store import load_open, load_state, message, persist, save_state

log = logging.getLogger("hazardwatch.rules")
# what ingest hands over: readings, gateway status, and (where ingest measures them) gateway clocks
Inbox = asyncio.Queue[ReadingBatch | GatewayStatus] | asyncio.Queue[ReadingBatch | GatewayStatus | GatewayClock]
TICK_MAX = 5.0  # seconds between ticks at the most


class RulesService:
    def __init__(self, *, park: Park, pool: AsyncConnectionPool, clock: Clock,
                 inbox: Inbox, outbox: asyncio.Queue[AlarmEvent] | None, registry: CollectorRegistry) -> None:
        self.park = park
        self.pool = pool
        self.clock = clock
        self.inbox = inbox
        self.outbox = outbox
        self.metrics = RulesMetrics(registry)
        self.engine = RuleEngine(park)
        self._lock = asyncio.Lock()
        self.restored = asyncio.Event()

    async def restore(self) -> int:
        """Load open alarms (and enterprise states) so a restart raises nothing twice."""
        async with self.pool.connection() as conn:
            alarms = await load_open(conn)
            cur = await conn.execute("SELECT code, state FROM units WHERE level = 'enterprise'")
            states = {r[0]: EnterpriseState(r[1]) for r in await cur.fetchall()}
        self.engine.ent_state.update({k: v for k, v in states.items() if k in self.engine.ent_state})
        self.engine.restore(alarms)
        await self._restore_learned()
        self.metrics.open.set(len(self.engine.alarms))
        self.restored.set()
        return len(alarms)

    async def run(self) -> None:
        n = await self.restore()
        log.info("rules running: %d sensors, %d open alarms restored", len(self.park.sensors), n)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._snapshot_loop(), name="rules-snapshot")
                await self._judge_loop()
        finally:
            await self._final_snapshot()

    async def _judge_loop(self) -> None:
        next_tick = time.monotonic()
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                item = await asyncio.wait_for(self.inbox.get(), timeout)
            except TimeoutError:
                item = None
            if item is not None:
                async with self._lock:
                    t0 = time.perf_counter()
                    if isinstance(item, ReadingBatch):
                        out = self.engine.on_batch(item, self.clock.now())
                        self.metrics.readings.inc(len(item))
                    elif isinstance(item, GatewayClock):
                        out = self.engine.on_clock(item)
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

    async def _final_snapshot(self) -> None:
        try:
            async with asyncio.timeout(5):
                await self.snapshot()
        except (TimeoutError, asyncio.CancelledError):
            log.warning("no learned-state snapshot at shutdown: the database did not answer in time")

    async def tick(self) -> None:
        async with self._lock:
            await self._commit(self.engine.on_tick(self.clock.now()))

    async def _commit(self, out: list[Transition]) -> None:
        if not out:
            return
        new = [t.alarm for t in out if t.alarm.alarm_id is None]
        delay = 0.2
        while True:
            try:
                async with self.pool.connection(timeout=10) as conn, conn.transaction():
                    await persist(conn, out, self.engine.bind)
                break
            except Exception as e:  # the database is away: alarms must not be lost, so wait and retry
                self.metrics.db_errors.inc()
                log.warning("storing %d alarm transitions failed (%s); retrying", len(out), e)
                for a in new:  # ids given inside the rolled-back transaction do not exist
                    if a.alarm_id is not None:
                        self.engine.by_id.pop(a.alarm_id, None)
                        a.alarm_id = None
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(5.0, delay * 2)
        for t in out:
            self.metrics.transitions.labels(t.kind.value, t.alarm.rule).inc()
            if self.outbox is not None:
                await self.outbox.put(to_event(t))
        self.metrics.open.set(len(self.engine.alarms))

    # --- operator commands --------------------------------------------------------------------
    async def ack(self, alarm_id: int, by: str, note: str | None = None) -> None:
        async with self._lock:
            await self._commit(self.engine.ack(alarm_id, by, self.clock.now(), note))

    async def resolve(self, alarm_id: int, by: str, cause: str, action: str) -> None:
        async with self._lock:
            await self._commit(self.engine.resolve(alarm_id, by, self.clock.now(), cause, action))

    async def shelve(self, alarm_id: int, by: str, reason: str, until: datetime) -> None:
        async with self._lock:
            await self._commit(self.engine.shelve(alarm_id, by, self.clock.now(), reason, until))

    async def unshelve(self, alarm_id: int, by: str) -> None:
        async with self._lock:
            await self._commit(self.engine.unshelve(alarm_id, by, self.clock.now()))

    async def set_enterprise_state(self, enterprise: str, state: EnterpriseState, by: str) -> None:
        async with self._lock:
            now = self.clock.now()
            out = self.engine.set_enterprise_state(enterprise, state, now)
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute("UPDATE units SET state = %s, state_since = %s, state_by = %s WHERE code = %s",
                                   (state.value, now, by, enterprise))
            await self._commit(out)


def to_event(t: Transition) -> AlarmEvent:
    """The event as alerting gets it: the alarm as it was at this transition, its sentence rendered."""
    a = t.alarm
    return AlarmEvent(
        alarm_id=a.alarm_id or 0, kind=t.kind, ts=t.ts, enterprise=a.enterprise, rule=a.rule, severity=t.severity,
        sensor_id=a.sensor_id, tag=a.tag, value=t.value, limit=t.limit, message=message(t), by=t.by,
        flood=a.flood, detail=dict(t.facts) | dict(t.detail) | {"state": t.state}, noticed_at=t.noticed_at,
    )
