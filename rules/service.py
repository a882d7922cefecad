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
from rules.store import load_open, persist

log = logging.getLogger("hazardwatch.rules")
TICK_MAX = 5.0  # seconds between ticks at the most


class RulesService:
    def __init__(self, *, park: Park, pool: AsyncConnectionPool, clock: Clock,
                 inbox: asyncio.Queue[ReadingBatch | GatewayStatus | GatewayClock],
                 outbox: asyncio.Queue[AlarmEvent] | None,
                 registry: CollectorRegistry) -> None:
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
        self.metrics.open.set(len(self.engine.alarms))
        self.restored.set()
        return len(alarms)

    async def run(self) -> None:
        n = await self.restore()
        log.info("rules running: %d sensors, %d open alarms restored", len(self.park.sensors), n)
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
                        out = self.engine.on_batch(item)
                        self.metrics.readings.inc(len(item))
                    elif isinstance(item, GatewayClock):
                        out = []  # ingest's clock measurement: the clock-offset rule is not here yet
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
    a = t.alarm
    return AlarmEvent(
        alarm_id=a.alarm_id or 0, kind=t.kind, ts=t.ts, enterprise=a.enterprise, rule=a.rule, severity=a.severity,
        sensor_id=a.sensor_id, tag=a.tag, value=a.value, limit=a.limit, message=a.message, by=t.by,
        flood=a.flood, detail=dict(a.detail) | dict(t.detail) | {"state": a.state},
    )
