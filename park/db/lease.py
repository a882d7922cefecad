"""Leadership as a lease in PostgreSQL: exactly one of any number of instances leads.

How it works:

- Each instance keeps one connection of its own, the *lease session*, and tries
  ``pg_try_advisory_lock`` on it every ``retry_every`` seconds. The session that gets the lock
  takes over: in one transaction it locks the ``ha_lease`` row ``FOR UPDATE`` — which waits for
  every writer still inside a fenced transaction of the old term — adds one to ``epoch``, stores
  a fresh ``token`` and commits. That is a new *term*.
- The leader renews (``renewed_at = now()``) every ``ttl / 3``. The lease session runs with
  ``idle_session_timeout = ttl``: a leader that stops renewing — frozen by SIGSTOP, a stalled
  event loop, cut off by the network — loses its session, and with it the lock, ``ttl`` after its
  last statement on the server's own clock. A standby then takes over. A leader killed outright
  loses the lock as soon as the server sees the socket close.
- The leader steps down by itself the moment it cannot renew: any error on the lease session, a
  term that moved on, a renewal that has not answered before the lease runs out, or its own
  monotonic clock past the last renewal plus ``ttl × (1 − margin)`` (``Elector.leading()``).
- Writers call ``await fence(conn, term)`` inside their own transaction: it takes a ``KEY SHARE``
  lock on the lease row and raises ``Fenced`` when the term is no longer current. The takeover's
  ``FOR UPDATE`` waits for those locks, so no write of an old term commits after a new term
  began. ``fence`` also limits the transaction's idle time to ``ttl``, so a writer frozen inside
  its transaction cannot hold a takeover up for longer than that: its transaction is ended by
  the server and nothing of it commits.

The lease session must reach PostgreSQL directly (a session advisory lock: not through a
transaction-pooling PgBouncer), and PostgreSQL must be 14 or newer (``idle_session_timeout``).
A multi-host URL with ``target_session_attrs=read-write`` follows a failover: advisory locks are
not replicated, so after a promotion the instances campaign again on the new primary.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

from park.errors import DatabaseError, HazardwatchError

log = logging.getLogger("hazardwatch.lease")

_LOCK_CLASS = 0x68776861  # "hwha": advisory-lock class of leases; the object is the lease name's crc32
MIN_SERVER_VERSION = 140000


def lock_key(name: str) -> tuple[int, int]:
    """The two-int advisory-lock key of lease ``name``."""
    return _LOCK_CLASS, zlib.crc32(name.encode()) & 0x7FFFFFFF


def backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Capped, jittered exponential back-off: seconds to wait before retry number ``attempt`` (0-based)."""
    return min(cap, base * 2.0 ** min(attempt, 30)) * random.uniform(0.5, 1.0)


class Fenced(HazardwatchError):
    """A write of a term that is no longer current: another instance took over since.

    ``epoch`` is the writer's term, ``current`` the lease row's epoch now (None if the row is gone).
    """

    def __init__(self, name: str, epoch: int, current: int | None) -> None:
        self.name, self.epoch, self.current = name, epoch, current
        super().__init__(f"lease {name!r}: term {epoch} is over (current epoch {current}); this instance no "
                         "longer leads and must not write")


@dataclass(frozen=True, slots=True)
class Term:
    """One instance's leadership, from its takeover until it steps down."""

    name: str
    epoch: int
    token: uuid.UUID
    instance: str
    ttl: float


async def fence(conn: AsyncConnection, term: Term) -> None:
    """Raise ``Fenced`` unless ``term`` is still the current one; call inside the writer's transaction.

    Holds a lock that makes a takeover wait for this transaction, so either the transaction
    commits before the next term begins or it is refused. Costs one round trip.
    """
    cur = await conn.execute(
        "SELECT epoch, token, set_config('idle_in_transaction_session_timeout', %s, true)"
        " FROM ha_lease WHERE name = %s FOR KEY SHARE",
        (str(int(term.ttl * 1000)), term.name),
    )
    if conn.info.transaction_status != TransactionStatus.INTRANS:
        raise DatabaseError("fence() must run inside the transaction whose writes it guards, not in autocommit")
    row = await cur.fetchone()
    if row is None or row[0] != term.epoch or row[1] != term.token:
        raise Fenced(term.name, term.epoch, row[0] if row else None)


@dataclass(slots=True)
class LeaseCore:
    """The decisions, without IO: is the term still ours on our own clock, and when to renew.

    Times are ``time.monotonic()`` seconds. A term is valid until the *send* time of its last
    successful renewal plus ``ttl × (1 − margin)``: the server starts counting a session's idle
    time only after that statement ended, so no other instance can take over before then. The
    margin covers clock-rate drift and scheduling.
    """

    ttl: float
    renew_every: float
    margin: float = 0.2
    term: Term | None = None
    valid_until: float = float("-inf")
    renewed_at: float = float("-inf")

    def acquired(self, term: Term, sent_at: float) -> None:
        self.term = term
        self.renewed(sent_at)

    def renewed(self, sent_at: float) -> None:
        self.renewed_at = sent_at
        self.valid_until = sent_at + self.ttl * (1.0 - self.margin)

    def lost(self) -> None:
        self.term = None
        self.valid_until = float("-inf")

    def current(self, now: float) -> Term | None:
        """The term if it is still ours at ``now``; None otherwise (even before IO says so)."""
        return self.term if self.term is not None and now < self.valid_until else None

    def renew_in(self, now: float) -> float:
        """Seconds until the next renewal is due."""
        return max(0.0, self.renewed_at + self.renew_every - now)

    def remaining(self, now: float) -> float:
        """Seconds the term has left at ``now`` (what a renewal may take at most)."""
        return max(0.0, self.valid_until - now)


def _db_reason(e: BaseException) -> str:
    return f"database: {type(e).__name__}: {str(e).strip()[:200]}"


class _StepDown(Exception):
    """Control flow inside ``Elector.run``; never escapes it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


Listener = Callable[[str, "Term | None", str], None]


@dataclass(slots=True)
class Elector:
    """Campaigns for lease ``name`` on ``url`` and leads while it holds it; ``run()`` never returns.

    ``leading()`` answers at once from the local clock; ``lead(work)`` runs ``work(term)`` for each
    term and cancels it the moment the term ends. ``monotonic`` and ``sleep`` are injectable so
    tests can stall the renewals. Transient database errors are retried with capped, jittered
    back-off; only a server too old for leases is raised (a configuration error).
    """

    url: str
    instance: str
    name: str = "leader"
    ttl: float = 10.0
    renew_every: float | None = None
    retry_every: float = 1.0
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    role: str = "starting"  # starting | offline (no database) | standby | leader
    core: LeaseCore = field(init=False)
    takeovers: int = 0
    renewals: int = 0
    last_step_down: str | None = None
    _failures: int = 0
    _listeners: list[Listener] = field(default_factory=list)
    _leading: asyncio.Event = field(default_factory=asyncio.Event)
    _lost: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        every = self.renew_every if self.renew_every is not None else self.ttl / 3
        if not 0 < every < self.ttl or not 0 < self.retry_every < self.ttl:
            raise ValueError(f"lease: renew_every ({every}) and retry_every ({self.retry_every}) must be "
                             f"positive and shorter than ttl ({self.ttl})")
        self.core = LeaseCore(self.ttl, every)

    # -- what the rest of the service asks ---------------------------------------------------

    def leading(self) -> Term | None:
        """The current term if this instance leads right now by its own clock, else None.

        Check it just before anything the database cannot fence (an SMS, a WeCom message).
        """
        return self.core.current(self.monotonic())

    def listen(self, fn: Listener) -> None:
        """``fn(role, term, reason)`` on every change of role."""
        self._listeners.append(fn)
        fn(self.role, self.core.term, "")

    async def wait_leading(self) -> Term:
        while True:
            await self._leading.wait()
            term = self.leading()
            if term is not None:
                return term
            await self._lost.wait()  # over by the clock: the run loop steps down next

    async def lead(self, work: Callable[[Term], Coroutine[Any, Any, None]]) -> None:
        """For every term: run ``work(term)``; cancel it when the term ends; wait for the next.

        The term ends when the run loop steps down or, even if that loop is stuck, when the
        local clock passes the term's validity. An exception from ``work`` is raised from here
        (the caller's supervision decides what to do).
        """
        while True:
            term = await self.wait_leading()
            job = asyncio.create_task(work(term), name=f"lead-{term.epoch}")
            ended = asyncio.create_task(self._until_over(term, self._lost), name=f"lease-{term.epoch}")
            try:
                await asyncio.wait({job, ended}, return_when=asyncio.FIRST_COMPLETED)
                if job.done() and not job.cancelled() and job.exception() is None:
                    await ended  # work finished on its own: still leader until the term ends
            finally:
                for t in (job, ended):
                    t.cancel()
                await asyncio.gather(job, ended, return_exceptions=True)
            if job.done() and not job.cancelled() and (exc := job.exception()) is not None:
                raise exc

    async def _until_over(self, term: Term, lost: asyncio.Event) -> None:
        while self.leading() is term and not lost.is_set():
            try:
                # not wait_for: on Python 3.11 it can swallow a cancellation
                async with asyncio.timeout(self.core.remaining(self.monotonic()) + 0.001):
                    await lost.wait()
            except TimeoutError:
                pass

    # -- the IO adapter ----------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                conn = await self._connect()
            except (psycopg.Error, OSError) as e:
                self._step_down(_db_reason(e))
                await self.sleep(self._backoff())
                continue
            reason = "stopping"
            try:
                await self._campaign(conn)
                await self._hold(conn)
            except _StepDown as e:
                reason = e.reason
            except (psycopg.Error, OSError) as e:
                reason = _db_reason(e)
                if self.core.term is not None and self.leading() is None:
                    # The term ran out by our own clock while the statement was under way: this
                    # process was paused or starved (SIGSTOP, a stalled loop), and the server has
                    # ended the silent session. Not a database outage: a leader that leads on
                    # through an outage must not do so after someone else may have taken over.
                    reason = f"lease ran out while the renewal was under way (process paused or starved); {reason}"
            finally:
                self._step_down(reason)  # before the session, and the lock with it, goes
                await conn.close()
            await self.sleep(self._backoff() if reason.startswith("database") else self.retry_every)

    def _backoff(self) -> float:
        self._failures += 1
        return backoff(self._failures - 1, base=self.retry_every, cap=max(self.ttl, 5.0))

    async def _connect(self) -> AsyncConnection:
        conn = await AsyncConnection.connect(self.url, autocommit=True, connect_timeout=max(2, int(self.ttl)),
                                             application_name=f"hazardwatch-lease {self.instance}"[:63])
        try:
            if conn.info.server_version < MIN_SERVER_VERSION:
                raise DatabaseError(f"leadership needs PostgreSQL 14 or newer (idle_session_timeout); the server "
                                    f"is {conn.info.server_version}")
            # The server ends this session — and frees the lock — when the leader stops talking.
            # synchronous_commit = local: a renewal must not wait for a synchronous replica that is
            # down (the leader would step down and nobody lead); losing one in a failover is harmless,
            # advisory locks are not replicated and the instances campaign again. A takeover still
            # waits for it (see _campaign).
            await conn.execute("SELECT set_config('idle_session_timeout', %s, false),"
                               " set_config('synchronous_commit', 'local', false)", (str(int(self.ttl * 1000)),))
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _campaign(self, conn: AsyncConnection) -> None:
        self._set_role("standby", "connected")
        while True:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", lock_key(self.name))
            row = await cur.fetchone()
            self._failures = 0
            if row is not None and row[0]:
                break
            await self.sleep(self.retry_every)
        token = uuid.uuid4()
        async with conn.transaction():
            # Writers of the old term hold KEY SHARE locks (fence): wait for them — at most ttl,
            # since fence() limits their idle time — and take the row only then.
            await conn.execute("SELECT set_config('lock_timeout', %s, true),"
                               # a new term is on the synchronous replica before anyone acts on it: a
                               # failover must not bring back the previous term as current (fencing)
                               " set_config('synchronous_commit', 'on', true)", (str(int(self.ttl * 3000)),))
            await conn.execute("INSERT INTO ha_lease (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (self.name,))
            await conn.execute("SELECT 1 FROM ha_lease WHERE name = %s FOR UPDATE", (self.name,))
            cur = await conn.execute(
                "UPDATE ha_lease SET epoch = epoch + 1, token = %s, holder = %s, holder_pid = pg_backend_pid(),"
                " acquired_at = now(), renewed_at = now(), ttl = make_interval(secs => %s) WHERE name = %s"
                " RETURNING epoch",
                (token, self.instance, self.ttl, self.name),
            )
            row = await cur.fetchone()
            assert row is not None
            sent = self.monotonic()  # the server's idle clock starts after the COMMIT: later than this
        term = Term(self.name, int(row[0]), token, self.instance, self.ttl)
        self.core.acquired(term, sent)
        self.takeovers += 1
        self._lost = asyncio.Event()
        log.warning("lease %s: %s leads, epoch %d", self.name, self.instance, term.epoch)
        self._set_role("leader", f"took over, epoch {term.epoch}")
        self._leading.set()

    async def _hold(self, conn: AsyncConnection) -> None:
        term = self.core.term
        assert term is not None
        while True:
            now = self.monotonic()
            await self.sleep(self.core.renew_in(now))
            sent = self.monotonic()
            left = self.core.remaining(sent)
            if left <= 0:
                raise _StepDown("lease ran out before it could be renewed (process paused or starved)")
            try:
                async with asyncio.timeout(left):
                    cur = await conn.execute("UPDATE ha_lease SET renewed_at = now() WHERE name = %s AND token = %s",
                                             (self.name, term.token))
            except TimeoutError:
                raise _StepDown("renewal did not answer before the lease ran out") from None
            if cur.rowcount != 1:
                raise _StepDown("another instance took over (the lease's term moved on)")
            self.core.renewed(sent)
            self.renewals += 1

    def _step_down(self, reason: str) -> None:
        was = self.core.term
        self.core.lost()
        self._leading.clear()
        self._lost.set()
        if was is not None:
            self.last_step_down = reason
            log.warning("lease %s: %s steps down from epoch %d: %s", self.name, self.instance, was.epoch, reason)
        self._set_role("offline" if reason.startswith("database") else "standby", reason)

    def _set_role(self, role: str, reason: str) -> None:
        if role == self.role and role != "leader":
            return
        if role == "offline":  # logged once per outage, not on every retry
            log.warning("lease %s: %s cannot reach the database, retrying: %s", self.name, self.instance, reason)
        elif self.role == "offline":
            log.warning("lease %s: %s reaches the database again", self.name, self.instance)
        self.role = role
        for fn in self._listeners:
            fn(role, self.core.term, reason)
