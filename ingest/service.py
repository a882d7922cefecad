"""The ingest stage: decode → rules → write → acknowledge, over the MQTT transport.

Messages arrive through :class:`ingest.transport.MqttTransport` (socket, TLS, reconnect,
acknowledgements). The decoder takes them in chunks; each chunk's readings go to the rule engine
at once (alarms never wait for the database) and join the pending work. A few writers, each with
a connection of its own, commit pending work as overlapping COPY transactions, so the database
is never idle while a transaction commits; messages are acknowledged to the broker strictly after
the commit that holds their readings, and in the order they arrived (MQTT 3.1.1 §4.6).

A crash at any moment therefore loses nothing: the broker redelivers what was not acknowledged,
and the database keeps one row per (sensor, ts). While the database is down nothing is
acknowledged, the broker's in-flight window fills and stops delivery, the transport's own limit
bounds memory, decoding goes on for what did arrive, and writing resumes by itself. Backfill marks
(which readings arrived late, for the board: :mod:`ingest.marks`) are the exception, secondary by
design: gathered per sensor after each commit and written in bulk every :data:`MARK_EVERY` seconds and
on a clean shutdown, so a crash loses the last interval's marks (the readings stay, shown as live).

The stage also measures each gateway's clock (:mod:`ingest.clock`) and tells the rules, beside
the readings and gateway status changes, with :class:`park.types.GatewayClock`.

Several brokers (a park's gateways publish to whichever they reach): one transport, with its own
persistent session and acknowledgements, per broker; one decoder and one pipeline for all. Each
chunk of work comes from one broker and is acknowledged on that broker's connection, after the
commit, in arrival order. A reading delivered by two brokers is stored once (the database's
(sensor, ts) key) and judged once: the rule engine judges each sensor's readings strictly newer
than the last it judged (``RuleEngine._prepare``), so the second copy changes nothing — no double
count of chatter, trend samples, votes or alarm events. Each broker's session going up or down is
told to the rules (:class:`park.types.BrokerState`), which raise the "broker unreachable" alarm.

Two sessions per broker (:func:`ingest.transport.broker_sessions`): the live one on ``{prefix}/#``, and
one for history re-sent after an outage (``{prefix}/+/backfill``). The live path has priority: when both
have messages waiting, live ones are decoded and handed to the rules first; history goes in smaller
chunks, only while the rules' inbox is nearly empty, with one chunk in every few rounds while live data
keeps coming, so it is not starved either. Each session is acknowledged on its own, in its own order.
The live session also receives every ``…/backfill`` message (its filter covers them, so that a topic
outside the contract's table still arrives and is rejected with a reason): those copies are not
decoded — the history session's copy is the one stored and judged — and are acknowledged as soon as
the work before them on that session is, without waiting for a commit of their own. Only once that
broker's history session has been established in this run (subscribed or resumed: the broker queues
for it from then on, even while it is away): before that, say a history session the broker refuses
from the start, the live copy is decoded, stored and judged as before v1.2, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ingest.decode import DEFAULT_MAX_PAYLOAD, Decoded, Decoder, Reject
from ingest.marks import PendingMarks
from ingest.metrics import IngestMetrics
from ingest.transport import STAGE, BrokerSessions, Message, MqttTransport, broker_sessions
from ingest.writer import write_batch, write_marks
from park.clock import Clock, SystemClock
from park.db.pool import RECONNECT_TIMEOUT, connect_defaults
from park.health import Health
from park.model import Park
from park.settings import Settings
from park.types import BrokerState, GatewayClock, GatewayStatus, ReadingBatch, epoch_us, from_epoch_us

log = logging.getLogger("hazardwatch.ingest")

Sink = asyncio.Queue[ReadingBatch | GatewayStatus | GatewayClock | BrokerState]

DB_STAGE = "ingest.database"  # our name in park.health
CHUNK_MESSAGES = 1_000  # decoded in one go: bounds how long the event loop is held
# history (…/backfill): a chunk of it is judged in about the time a live one is, and enters the rules'
# inbox only while that holds at most BACKFILL_AHEAD batches — so a live batch waits behind at most
# that much history; while live data keeps coming, history still gets one chunk every LIVE_ROUND + 1
BACKFILL_CHUNK = 100
BACKFILL_AHEAD = 2
LIVE_ROUND = 8
BACKFILL_POLL = 0.01  # seconds between looks at the rules' inbox while history waits for room
WRITERS = 3  # write transactions in flight at once
WRITE_READINGS = 50_000  # per transaction, at most (whole chunks)
WRITE_MESSAGES = 2_500  # a quarter of the shipped broker's in-flight window (10,000): several in flight
DB_RETRY_MIN, DB_RETRY_MAX = 0.25, 10.0
CLOCK_EVERY = 1.0  # seconds between looks at the gateway clocks
REJECT_LOG_EVERY = 10.0  # seconds between log lines about rejected input
# seconds between writes of the backfill marks (ingest.marks): what a crash can lose of them
MARK_EVERY = 5.0
# the live session connects once the history session's first attempt has ended (so the live copies of a
# backlog are known to be the history session's, or not), or after this long whatever it does
HISTORY_FIRST = 15.0


@dataclass(slots=True)
class _Work:
    seq: int  # decode order on its session: acknowledgements follow it
    decoded: Decoded
    batch: ReadingBatch | None
    messages: list[Message]
    transport: MqttTransport  # the session that delivered them: acknowledged on its connection


@dataclass(slots=True, eq=False)  # told apart by identity: one per session
class _AckOrder:
    """One session's acknowledgement order: work is numbered as decoded and settled in that order."""

    seq: int = 0
    next: int = 0
    done: dict[int, _Work] = field(default_factory=dict)


class IngestService:
    """Runs until cancelled; ``connected`` tells readiness (broker session up and subscribed).

    ``pool`` is the service's shared pool; the writers use connections of their own (at most
    ``writers``, from ``settings.database_url``), driven from worker threads. ``health``, when given,
    hears ``ingest.broker`` and ``ingest.database`` go degraded and recover.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        park: Park,
        pool: AsyncConnectionPool,
        sink: Sink | None,
        registry: CollectorRegistry,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        health: Health | None = None,
        writers: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        # hazardwatch's time: arrival stamps, the door's bounds, clock offsets, lag — the same clock
        # the rules tick on, so liveness and escalation agree with what ingest saw
        self.clock = clock or SystemClock()
        self.pool = pool
        self.sink = sink
        self.health = health
        self.writers = max(1, writers if writers is not None else WRITERS)
        self.metrics = IngestMetrics(registry)
        self.decoder = Decoder(park, settings.mqtt_prefix, max_payload, settings.backfill)
        self._wake = asyncio.Event()  # some transport's inbox has messages
        targets = settings.brokers
        self._states: list[BrokerState] = []  # session changes not yet handed to the rules
        self._state_wake = asyncio.Event()
        # two sessions per broker: live and history (…/backfill)
        self.sessions: list[BrokerSessions] = [
            broker_sessions(t, settings.mqtt_client_id, settings.mqtt_prefix, metrics=self.metrics, health=health,
                            now_us=self._now_us, wake=self._wake,
                            stage=STAGE if len(targets) == 1 else f"{STAGE}[{t.name}]",
                            on_state=functools.partial(self._broker_state, t.name),
                            on_settled=self._report_queue if len(targets) > 1 else None,
                            on_history=self._check_ready)
            for t in targets]
        self.transports = [ss.live for ss in self.sessions]  # the live sessions, one per broker
        self.backfills = [ss.backfill for ss in self.sessions]  # the history sessions, one per broker
        self.transport = self.transports[0]  # the first (or only) broker's live session
        self.backfill = self.backfills[0]
        self._backfill_prefix = settings.mqtt_prefix.strip("/") + "/"
        self._subscribed = asyncio.Event()
        self._pending: list[_Work] = []
        self._work = asyncio.Event()  # there is pending work
        self._order = {t: _AckOrder() for ss in self.sessions for t in ss}
        self._history_of = {ss.live: ss.backfill for ss in self.sessions}
        self._turn = 0  # which broker's sessions are looked at first (they take turns)
        self._live_run = 0  # live chunks decoded in a row while history waited
        self._db_failing = False
        self._writers_pool: ConnectionPool | None = None
        self._last_reject_log = -REJECT_LOG_EVERY
        self._rejects_since_log = 0
        self.marks = PendingMarks()  # backfill marks of committed readings, not yet written
        self._marking: asyncio.Task[bool] | None = None  # the marks' write under way
        if health is not None:
            # a stage built anew (the next term's, after a failover) inherits the report its
            # predecessor left: its first write that succeeds must clear it
            self._db_failing = not health.register(DB_STAGE).ok

    def _now_us(self) -> int:
        if type(self.clock) is SystemClock:  # the common case, without a datetime per message
            return time.time_ns() // 1000
        return epoch_us(self.clock.now())

    @property
    def connected(self) -> bool:
        """At least one broker session is up and subscribed."""
        return any(t.connected for t in self.transports)

    @property
    def subscribed(self) -> asyncio.Event:
        """Set while a broker queues for both our sessions: the live one subscribed, the history one
        subscribed or resumed (a resumed history session's SUBACK may wait in the socket behind a
        backlog the broker sends first, while history waits for the rules or the database)."""
        self._check_ready()
        return self._subscribed

    def _check_ready(self) -> None:
        if any(ss.live.subscribed.is_set() and (ss.backfill.subscribed.is_set() or ss.backfill.resumed.is_set())
               for ss in self.sessions):
            self._subscribed.set()
        else:
            self._subscribed.clear()

    def brokers(self) -> dict[str, dict[str, object]]:
        """Each broker's session, for ``/api/v1/cluster`` and ``hazardwatch status``."""
        return {t.name: {"connected": t.connected, "sessions": t.session, "failures": t.failures}
                for t in self.transports}

    def _report_queue(self) -> None:
        self.metrics.queue.set(sum(t.held for t in self.transports))
        self.metrics.backfill_queue.set(sum(t.held for t in self.backfills))

    def _broker_state(self, name: str, up: bool) -> None:
        self._states.append(BrokerState(name, up, self.clock.now()))
        self._state_wake.set()
        self._check_ready()

    async def run(self) -> None:
        assert self.settings.database_url is not None
        # the writers' own connections, used from worker threads (see ingest.writer); opened without
        # waiting, so the stage starts, and feeds the rules, while the database is away
        # one more for the backfill marks, so their write never waits for a writer's connection
        pool = writers_pool(self.settings.database_url.get_secret_value(), self.writers + 1)
        await asyncio.to_thread(pool.open, False)
        self._writers_pool = pool
        try:
            await self._run()
        finally:
            # a clean shutdown writes the marks still pending (the readings they mark are acknowledged)
            await asyncio.shield(self._last_marks())
            self._writers_pool = None
            await asyncio.shield(asyncio.to_thread(pool.close, 5.0))

    async def _run(self) -> None:
        # every broker starts unreachable for the rules until its session is up: one that never
        # answers raises its alarm after broker_unreachable_after like one lost later
        now = self.clock.now()
        self._states[:0] = [BrokerState(t.name, t.connected, now) for t in self.transports]
        self._state_wake.set()
        async with asyncio.TaskGroup() as tg:
            for k, ss in enumerate(self.sessions):
                name = "ingest-mqtt" if k == 0 else f"ingest-mqtt-{k}"
                tg.create_task(ss.backfill.run(), name=f"{name}-backfill")
                tg.create_task(self._live_after_history(ss), name=name)
            tg.create_task(self._state_loop(), name="ingest-brokers")
            tg.create_task(self._decode_loop(), name="ingest-decode")
            tg.create_task(self._clock_loop(), name="ingest-clock")
            tg.create_task(self._mark_loop(), name="ingest-marks")
            for i in range(self.writers):
                tg.create_task(self._write_loop(), name=f"ingest-write-{i}")

    @staticmethod
    async def _live_after_history(ss: BrokerSessions) -> None:
        """The live session, once the broker's history session has connected or failed its first try: a
        resumed live session's backlog may hold copies of ``…/backfill`` that are passed over only if the
        history session is established (module docstring), which is then known."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HISTORY_FIRST):
                await ss.backfill.tried.wait()
        await ss.live.run()

    # --- decode → rules ---------------------------------------------------------------------------
    def _next_source(self) -> tuple[MqttTransport | None, bool]:
        """The session to decode from next, live first (see the module docstring), and whether history
        is waiting for room in the rules' inbox. The brokers take turns, a chunk each, so a backlog on
        one never starves the other."""
        n = len(self.sessions)
        order = [self.sessions[(self._turn + k) % n] for k in range(n)]
        live = next((ss.live for ss in order if ss.live.inbox), None)
        history = next((ss.backfill for ss in order if ss.backfill.inbox), None)
        room = history is not None and (self.sink is None or self.sink.qsize() <= BACKFILL_AHEAD)
        if live is not None and not (room and self._live_run >= LIVE_ROUND):
            pick: MqttTransport | None = live
            self._live_run += 1 if history is not None else 0
        else:
            pick = history if room else None
            self._live_run = 0
        if pick is not None:
            self._turn = (next(k for k, ss in enumerate(self.sessions) if pick in ss) + 1) % n
        return pick, history is not None and not room

    def _is_backfill(self, topic: str) -> bool:
        """``topic`` is one the history session's ``{prefix}/+/backfill`` also matches."""
        p = self._backfill_prefix
        return topic.endswith("/backfill") and topic.startswith(p) and topic.count("/", len(p)) == 1

    async def _decode_loop(self) -> None:
        decode = self.decoder.decode
        is_backfill = self._is_backfill
        while True:
            transport, history_waits = self._next_source()
            if transport is None:
                self._wake.clear()
                if history_waits:  # for live messages, or for the rules to take what they have
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(BACKFILL_POLL):
                            await self._wake.wait()
                else:
                    await self._wake.wait()
                continue
            history = transport.backfill
            messages = transport.take(BACKFILL_CHUNK if history else CHUNK_MESSAGES)
            out = Decoded()
            copies = 0
            # the live copies of …/backfill are left to the history session once the broker queues for it
            skip = not history and self._history_of[transport].established
            for topic, payload, _mid, _qos, received_us, _session in messages:
                if skip and is_backfill(topic):
                    copies += 1  # the history session's copy is the one decoded, stored and judged
                    continue
                decode(out, topic, payload, received_us)
            batch = out.batch() if len(out) else None
            order = self._order[transport]
            work = _Work(order.seq, out, batch, messages, transport)
            order.seq += 1
            if copies:
                self.metrics.backfill_copies.inc(copies)
            if copies == len(messages):
                self._acknowledge([work])  # nothing to store: settled once the work before it is
                await asyncio.sleep(0)
                continue
            self._pending.append(work)
            self._work.set()
            self.metrics.messages.inc(len(messages) - copies)
            if batch is not None:
                self.metrics.readings.inc(len(batch))
                if not history:  # history is hours old by nature: the lag is the live data's
                    self.metrics.lag.set((self._now_us() - float(batch.ts_us.max())) / 1e6)
            if out.seq_gaps:
                self.metrics.seq_gaps.inc(out.seq_gaps)
            if out.rejects:
                self._count_rejects(out.rejects)
            for status in out.statuses:
                self.metrics.status.labels(str(status.online).lower()).inc()
            if self.sink is not None:
                # the rule engine sees readings before they are stored: alarms never wait for the
                # database; a full sink pushes back on decoding (the transport's limit bounds the rest)
                if batch is not None:
                    await self.sink.put(batch)
                for status in out.statuses:
                    await self.sink.put(status)
            await asyncio.sleep(0)  # let the socket and the writers have a turn between chunks

    async def _state_loop(self) -> None:
        """Broker sessions going up or down, to the rules (the "broker unreachable" alarm), in order."""
        while True:
            if not self._states:
                self._state_wake.clear()
                await self._state_wake.wait()
                continue
            state = self._states.pop(0)
            if self.sink is not None:
                await self.sink.put(state)

    async def _clock_loop(self) -> None:
        """Gateway clock offsets, to the rules and the metric: when one moves, or about once a minute."""
        while True:
            await asyncio.sleep(CLOCK_EVERY)
            now_us = self._now_us()
            for ent, offset in self.decoder.clocks.due(now_us):
                self.metrics.clock_offset.labels(ent).set(offset)
                if self.sink is not None:
                    await self.sink.put(GatewayClock(ent, offset, from_epoch_us(now_us)))

    # --- write → acknowledge ------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                self._work.clear()
                await self._work.wait()
                continue
            works = self._take()
            self.metrics.writes_in_flight.inc()
            try:
                await self._commit(works)
            finally:
                self.metrics.writes_in_flight.dec()
            self._acknowledge(works)

    def _take(self) -> list[_Work]:
        """The oldest pending work, up to one transaction's worth; the rest is left for the next writer,
        so a backlog is written by several transactions at once."""
        pending = self._pending
        n = readings = messages = 0
        while n < len(pending) and readings < WRITE_READINGS and messages < WRITE_MESSAGES:
            w = pending[n]
            readings += len(w.batch) if w.batch is not None else 0
            messages += len(w.messages)
            n += 1
        taken = pending[:n]
        del pending[:n]
        return taken

    def _acknowledge(self, works: list[_Work]) -> None:
        """Acknowledge in each session's arrival order: work committed early waits for the work before it
        on its session (never for another session's)."""
        orders: list[_AckOrder] = []
        for w in works:
            order = self._order[w.transport]
            order.done[w.seq] = w
            if order not in orders:
                orders.append(order)
        for order in orders:
            while order.next in order.done:
                w = order.done.pop(order.next)
                w.transport.settle(w.messages)
                order.next += 1

    async def _commit(self, works: list[_Work]) -> None:
        """Write until it succeeds: nothing is acknowledged before, so waiting loses nothing."""
        batch = _concat([w.batch for w in works if w.batch is not None])
        rejects = [r for w in works for r in w.decoded.rejects]
        statuses = [s for w in works for s in w.decoded.statuses]
        n = len(batch) if batch is not None else 0
        delay = DB_RETRY_MIN
        while True:
            t0 = time.perf_counter()
            try:
                new = await asyncio.to_thread(self._write, batch, rejects, statuses)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                # two writers met on the same redelivered readings: not a fault, go again
                await asyncio.sleep(random.uniform(0.0, 0.05))
                continue
            except Exception as e:  # database down or restarting: wait and retry the same work
                self.metrics.db_errors.inc()
                self._db_failing = True
                if self.health is not None:
                    self.health.degraded(DB_STAGE, f"writing readings fails: {type(e).__name__}")
                log.warning("writing %d readings failed (%s: %s); retrying in %.1fs",
                            n, type(e).__name__, str(e).strip()[:200], delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(DB_RETRY_MAX, delay * 2)
                continue
            if self._db_failing:
                self._db_failing = False
                if self.health is not None:
                    self.health.ok(DB_STAGE)
            self.metrics.batches.inc()
            self.metrics.batch_seconds.observe(time.perf_counter() - t0)
            self.metrics.batch_rows.observe(n)
            self.metrics.stored.inc(new)
            self.metrics.duplicates.inc(n - new)
            # marked once stored, written later (_mark_loop); work cut short before this point is not
            # acknowledged, so it comes again and is marked then
            for w in works:
                if w.batch is not None:
                    self.marks.add(self.decoder.late_marks(w.batch))
            return

    def _write(self, batch: ReadingBatch | None, rejects: list[Reject], statuses: list[GatewayStatus]) -> int:
        """In a worker thread, on a writer connection of its own."""
        assert self._writers_pool is not None
        with self._writers_pool.connection(timeout=10) as conn:
            return write_batch(conn, batch, rejects, statuses, self.clock.now())

    # --- backfill marks -------------------------------------------------------------------------------
    async def _mark_loop(self) -> None:
        while True:
            await asyncio.sleep(MARK_EVERY)
            await self.flush_marks()

    async def flush_marks(self) -> bool:
        """Write the backfill marks pending now (one row per sensor), after any write of them under way;
        whether they are stored. Marks that fail stay pending, merged with later ones, for the next try.
        The write runs as a task of its own, shielded: a shutdown waits for it rather than cutting it off
        (a write cut off might be stored and then written again)."""
        if self._marking is not None and not self._marking.done():
            await asyncio.shield(self._marking)
        self._marking = asyncio.create_task(self._write_marks(), name="ingest-marks-write")
        return await asyncio.shield(self._marking)

    async def _write_marks(self) -> bool:
        marks = self.marks.take()
        if not len(marks):
            return True
        try:
            await asyncio.to_thread(self._write_marks_sync, marks)
        except Exception as e:
            self.marks.add(marks)
            log.warning("writing %d backfill marks failed (%s: %s); kept for the next try", len(marks),
                        type(e).__name__, str(e).strip()[:200])
            return False
        return True

    def _write_marks_sync(self, marks: npt.NDArray[np.void]) -> None:
        assert self._writers_pool is not None
        with self._writers_pool.connection(timeout=10) as conn:
            write_marks(conn, marks)

    async def _last_marks(self) -> None:
        """At shutdown: the marks still pending, written once; what cannot be written is said, and lost."""
        try:
            if not await self.flush_marks():
                log.warning("%d backfill marks lost at shutdown: the board shows those readings as live",
                            len(self.marks))
        except Exception:  # the shutdown goes on whatever the marks do
            log.exception("writing the backfill marks at shutdown failed")

    def _count_rejects(self, rejects: list[Reject]) -> None:
        for r in rejects:
            self.metrics.rejected.labels(r.reason.value).inc()
        self._rejects_since_log += len(rejects)
        now = time.monotonic()
        if now - self._last_reject_log >= REJECT_LOG_EVERY:
            first = rejects[0]
            log.warning("rejected %d inputs since the last report, e.g. %s on %s: %s", self._rejects_since_log,
                        first.reason.value, first.topic[:120], first.detail)
            self._last_reject_log = now
            self._rejects_since_log = 0


def writers_pool(url: str, size: int) -> ConnectionPool:
    """The writers' own connections (unopened): the same connect defaults as the shared pool, so a
    writer never waits forever on a host of a multi-host URL that vanished (a failover)."""
    return ConnectionPool(url, min_size=0, max_size=size, open=False, name="hazardwatch-ingest",
                          reconnect_timeout=RECONNECT_TIMEOUT,
                          kwargs={"autocommit": False, "application_name": "hazardwatch-ingest",
                                  **connect_defaults(url)})


def _concat(batches: list[ReadingBatch]) -> ReadingBatch | None:
    if not batches:
        return None
    if len(batches) == 1:
        return batches[0]
    return ReadingBatch(
        sensor_id=np.concatenate([b.sensor_id for b in batches]),
        ts_us=np.concatenate([b.ts_us for b in batches]),
        value=np.concatenate([b.value for b in batches]),
        quality=np.concatenate([b.quality for b in batches]),
        received_us=max(b.received_us for b in batches),
    )
