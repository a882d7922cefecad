"""Commits waiting for a synchronous replica that is gone: kept on the primary, and said.

With synchronous replication (``synchronous_standby_names`` on the primary, as the operations guide
recommends) every commit waits until a synchronous replica has it. When the only one is down, every
commit waits — without an error: ingest stores and acknowledges nothing, the rules record no alarm,
alerting sends nothing, and since nothing fails, the local journal never takes over and ``/readyz``
stays green. PostgreSQL's ``statement_timeout`` does not cover that wait; a cancel request does: the
server keeps the commit on the primary alone (committed, with a warning) and the session goes on.

:class:`SyncRepGuard`, one per instance, watches this database's sessions of hazardwatch
(``application_name`` ``hazardwatch…``, the same user) for commits waiting on the replica
(``wait_event = 'SyncRep'``):

- a wait longer than ``wait_max`` (``HAZARDWATCH_SYNC_COMMIT_WAIT``, 3 s) is cancelled, and the
  replica counts as not confirming: stage ``database.replica`` degraded (``/readyz`` 503 names it),
  ``hazardwatch_db_sync_replica_confirming`` 0;
- while it does not confirm, every such wait is cancelled as soon as it is seen (every
  ``degraded_every``): commits cost a fraction of a second, not ``wait_max`` each;
- a probe commit of its own (``ha_sync_probes``) every ``probe_every`` tells when the replica
  confirms again (within ``wait_max``): the stage is well again and waits are left alone.

Without synchronous replication nothing ever waits and the guard only probes. The price of going
on: while degraded, commits are on the primary alone, and a failover in that time loses them —
the operations guide says so; the alternative was no alarm at all. A cancel that arrives just after
its commit finished hits the session's next statement instead (``QueryCanceled``), which every
stage retries as the transient fault it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge
from psycopg import AsyncConnection

from park.db.lease import backoff
from park.db.pool import connect_defaults
from park.health import Health

log = logging.getLogger("hazardwatch.syncrep")

STAGE = "database.replica"
WAIT_MAX = 3.0  # seconds a commit may wait for the synchronous replica before it is kept on the primary alone
EVERY = 1.0  # seconds between looks while the replica confirms
DEGRADED_EVERY = 0.1  # … and while it does not (each look may cut a stage's commit short)
PROBE_EVERY = 5.0  # seconds between probe commits

_WAITS = ("SELECT pid, query_start FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
          " AND datname = current_database() AND usename = current_user"
          " AND application_name LIKE 'hazardwatch%%' AND pid <> pg_backend_pid()")
# cancels only a session still waiting: one whose commit finished meanwhile is left alone. The
# sessions are chosen in a subquery the planner keeps (OFFSET 0): a condition next to
# pg_cancel_backend() in one WHERE may be evaluated after it, and cancel every session there is
_CANCEL = ("SELECT pid FROM (SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s) AND wait_event = 'SyncRep'"
           " AND pid <> pg_backend_pid() OFFSET 0) w WHERE pg_cancel_backend(pid)")
_PROBE = ("INSERT INTO ha_sync_probes (instance, at) VALUES (%s, now())"
          " ON CONFLICT (instance) DO UPDATE SET at = excluded.at")


class SyncRepMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.confirming = Gauge("hazardwatch_db_sync_replica_confirming",
                                "1 while commits reach the synchronous replica (or none is configured), 0 while "
                                "hazardwatch keeps them on the primary alone", registry=registry)
        self.cancelled = Counter("hazardwatch_db_sync_waits_cancelled_total",
                                 "Commits whose wait for the synchronous replica hazardwatch cut short (kept on the "
                                 "primary alone)", registry=registry)
        self.confirming.set(1)


class SyncRepGuard:
    """See the module docstring. ``run()`` until cancelled; ``check()`` is one look (for tests)."""

    def __init__(self, url: str, instance: str, *, health: Health, registry: CollectorRegistry | None = None,
                 wait_max: float = WAIT_MAX, every: float = EVERY, degraded_every: float = DEGRADED_EVERY,
                 probe_every: float = PROBE_EVERY, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 now: Callable[[], datetime] | None = None) -> None:
        self.url, self.instance, self.health = url, instance, health
        self.wait_max, self.every, self.degraded_every, self.probe_every = wait_max, every, degraded_every, probe_every
        self.monotonic, self.sleep, self.now = monotonic, sleep, now
        self.metrics = SyncRepMetrics(registry if registry is not None else CollectorRegistry())
        self.confirming = True
        self.cancelled = 0  # waits cut short, all told
        self.probes = 0  # probe commits finished, all told
        self._seen: dict[tuple[int, datetime], float] = {}  # (pid, statement start) → first seen waiting
        self._probe_pid: int | None = None
        self._probe_since = 0.0
        self._probe_cut = False
        health.register(STAGE)

    @property
    def waits(self) -> set[int]:
        """The sessions the last look saw waiting for the replica (their ages count from that look on)."""
        return {pid for pid, _ in self._seen}

    # --- one look -----------------------------------------------------------------------------
    async def check(self, conn: AsyncConnection) -> list[int]:
        """Cancel the waits that are due; return their session ids."""
        cur = await conn.execute(_WAITS)
        rows = await cur.fetchall()
        t = self.monotonic()
        seen = {(int(pid), start): self._seen.get((int(pid), start), t) for pid, start in rows}
        self._seen = seen
        due = []
        for (pid, _), since in seen.items():
            if pid == self._probe_pid:
                if t - self._probe_since >= self.wait_max:
                    due.append(pid)
            elif not self.confirming or t - since >= self.wait_max:
                due.append(pid)
        if not due:
            return []
        cur = await conn.execute(_CANCEL, (due,))
        cut = [int(r[0]) for r in await cur.fetchall()]
        if self._probe_pid in cut:
            self._probe_cut = True
        stages = [p for p in cut if p != self._probe_pid]
        if stages:
            self.cancelled += len(stages)
            self.metrics.cancelled.inc(len(stages))
            log.debug("cut short %d commit(s) waiting for the synchronous replica", len(stages))
        if cut:
            self._not_confirming(f"{len(cut)} commit(s) waited {self.wait_max:g} s")
        return cut

    # --- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        failures = 0
        while True:
            try:
                async with await self._connect("guard") as watch, await self._connect("probe") as probe:
                    failures = 0
                    await self._watch(watch, probe)
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as e:
                # the database away: the stages say so; the replica's state is unknown until it is back
                if failures == 0:
                    log.info("synchronous-replication guard: the database is away (%s); looking again", e)
                await self.sleep(backoff(failures, base=1.0, cap=10.0))
                failures += 1

    async def _watch(self, watch: AsyncConnection, probe: AsyncConnection) -> None:
        self._probe_pid = probe.info.backend_pid
        task: asyncio.Task[bool] | None = None
        next_probe = self.monotonic()
        try:
            while True:
                if task is None and self.monotonic() >= next_probe:
                    self._probe_since, self._probe_cut = self.monotonic(), False
                    task = asyncio.create_task(self._probe(probe), name="syncrep-probe")
                await self.check(watch)
                if task is not None and task.done():
                    ok = task.result() and not self._probe_cut  # a database fault is raised here
                    task = None
                    self.probes += 1
                    next_probe = self.monotonic() + self.probe_every
                    if ok:
                        self._confirmed()
                    else:
                        self._not_confirming(f"a probe commit waited {self.wait_max:g} s")
                await self.sleep(self.every if self.confirming else self.degraded_every)
        finally:
            self._probe_pid = None
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _probe(self, conn: AsyncConnection) -> bool:
        try:
            await conn.execute(_PROBE, (self.instance,))
        except psycopg.errors.QueryCanceled:  # our cancel came as the commit finished: ask again later
            return False
        return True

    async def _connect(self, what: str) -> AsyncConnection:
        kw: dict[str, Any] = {**connect_defaults(self.url),
                              "application_name": f"hazardwatch-syncrep-{what} {self.instance}"[:63]}
        return await AsyncConnection.connect(self.url, autocommit=True, **kw)

    # --- state --------------------------------------------------------------------------------
    def _not_confirming(self, why: str) -> None:
        if self.confirming:
            self.confirming = False
            self.metrics.confirming.set(0)
            log.error("the synchronous replica confirms no commit (%s): hazardwatch keeps its commits on the "
                      "primary alone until it does — a failover now would lose them; start the replica or relax "
                      "synchronous_standby_names", why)
        self.health.degraded(STAGE, "the synchronous replica confirms no commit within "
                             f"{self.wait_max:g} s: commits kept on the primary alone (lost if it fails now)",
                             self.now() if self.now else None)

    def _confirmed(self) -> None:
        if not self.confirming:
            self.confirming = True
            self.metrics.confirming.set(1)
            log.warning("the synchronous replica confirms commits again")
        self.health.ok(STAGE, self.now() if self.now else None)
