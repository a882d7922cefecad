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
bounds memory, decoding goes on for what did arrive, and writing resumes by itself.

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
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ingest.decode import DEFAULT_MAX_PAYLOAD, Decoded, Decoder, Reject
from ingest.metrics import IngestMetrics
from ingest.transport import STAGE, Message, MqttTransport
from ingest.writer import write_batch
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
WRITERS = 3  # write transactions in flight at once
WRITE_READINGS = 50_000  # per transaction, at most (whole chunks)
WRITE_MESSAGES = 2_500  # a quarter of the shipped broker's in-flight window (10,000): several in flight
DB_RETRY_MIN, DB_RETRY_MAX = 0.25, 10.0
CLOCK_EVERY = 1.0  # seconds between looks at the gateway clocks
REJECT_LOG_EVERY = 10.0  # seconds between log lines about rejected input


@dataclass(slots=True)
class _Work:
    seq: int  # decode order: acknowledgements follow it
    decoded: Decoded
    batch: ReadingBatch | None
    messages: list[Message]
    transport: MqttTransport  # the broker that delivered them: acknowledged on its connection


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
        self.transports = [
            MqttTransport(t, settings.mqtt_client_id, f"{settings.mqtt_prefix}/#", metrics=self.metrics,
                          health=health, now_us=self._now_us, wake=self._wake,
                          stage=STAGE if len(targets) == 1 else f"{STAGE}[{t.name}]",
                          on_state=functools.partial(self._broker_state, t.name),
                          on_settled=self._report_queue if len(targets) > 1 else None)
            for t in targets]
        self.transport = self.transports[0]  # the first (or only) broker
        self._subscribed = asyncio.Event()
        self._pending: list[_Work] = []
        self._work = asyncio.Event()  # there is pending work
        self._seq = 0
        self._next_ack = 0
        self._done: dict[int, _Work] = {}
        self._db_failing = False
        self._writers_pool: ConnectionPool | None = None
        self._last_reject_log = -REJECT_LOG_EVERY
        self._rejects_since_log = 0
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
        """Set while a broker has accepted our subscription (with one broker: that broker's event)."""
        if len(self.transports) == 1:
            return self.transport.subscribed
        if any(t.subscribed.is_set() for t in self.transports):
            self._subscribed.set()
        else:
            self._subscribed.clear()
        return self._subscribed

    def brokers(self) -> dict[str, dict[str, object]]:
        """Each broker's session, for ``/api/v1/cluster`` and ``hazardwatch status``."""
        return {t.name: {"connected": t.connected, "sessions": t.session, "failures": t.failures}
                for t in self.transports}

    def _report_queue(self) -> None:
        self.metrics.queue.set(sum(t.held for t in self.transports))

    def _broker_state(self, name: str, up: bool) -> None:
        self._states.append(BrokerState(name, up, self.clock.now()))
        self._state_wake.set()
        if up and len(self.transports) > 1:
            self._subscribed.set()

    async def run(self) -> None:
        assert self.settings.database_url is not None
        # the writers' own connections, used from worker threads (see ingest.writer); opened without
        # waiting, so the stage starts, and feeds the rules, while the database is away
        pool = writers_pool(self.settings.database_url.get_secret_value(), self.writers)
        await asyncio.to_thread(pool.open, False)
        self._writers_pool = pool
        try:
            await self._run()
        finally:
            self._writers_pool = None
            await asyncio.shield(asyncio.to_thread(pool.close, 5.0))

    async def _run(self) -> None:
        # every broker starts unreachable for the rules until its session is up: one that never
        # answers raises its alarm after broker_unreachable_after like one lost later
        now = self.clock.now()
        self._states[:0] = [BrokerState(t.name, t.connected, now) for t in self.transports]
        self._state_wake.set()
        async with asyncio.TaskGroup() as tg:
            for k, t in enumerate(self.transports):
                tg.create_task(t.run(), name="ingest-mqtt" if k == 0 else f"ingest-mqtt-{k}")
            tg.create_task(self._state_loop(), name="ingest-brokers")
            tg.create_task(self._decode_loop(), name="ingest-decode")
            tg.create_task(self._clock_loop(), name="ingest-clock")
            for i in range(self.writers):
                tg.create_task(self._write_loop(), name=f"ingest-write-{i}")

    # --- decode → rules ---------------------------------------------------------------------------
    async def _decode_loop(self) -> None:
        transports = self.transports
        decode = self.decoder.decode
        turn = 0
        while True:
            # the brokers take turns, a chunk each, so a backlog on one never starves the other
            for k in range(len(transports)):
                transport = transports[(turn + k) % len(transports)]
                if transport.inbox:
                    turn = (turn + k + 1) % len(transports)
                    break
            else:
                self._wake.clear()
                await self._wake.wait()
                continue
            messages = transport.take(CHUNK_MESSAGES)
            out = Decoded()
            for topic, payload, _mid, _qos, received_us, _session in messages:
                decode(out, topic, payload, received_us)
            batch = out.batch() if len(out) else None
            self._pending.append(_Work(self._seq, out, batch, messages, transport))
            self._seq += 1
            self._work.set()
            self.metrics.messages.inc(len(messages))
            if batch is not None:
                self.metrics.readings.inc(len(batch))
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
        """Acknowledge in arrival order: work committed early waits for the work before it."""
        for w in works:
            self._done[w.seq] = w
        while self._next_ack in self._done:
            w = self._done.pop(self._next_ack)
            w.transport.settle(w.messages)
            self._next_ack += 1

    async def _commit(self, works: list[_Work]) -> None:
        """Write until it succeeds: nothing is acknowledged before, so waiting loses nothing."""
        batch = _concat([w.batch for w in works if w.batch is not None])
        rejects = [r for w in works for r in w.decoded.rejects]
        statuses = [s for w in works for s in w.decoded.statuses]
        late = [span for w in works if w.batch is not None for span in self.decoder.late_spans(w.batch)]
        n = len(batch) if batch is not None else 0
        delay = DB_RETRY_MIN
        while True:
            t0 = time.perf_counter()
            try:
                new = await asyncio.to_thread(self._write, batch, rejects, statuses, late)
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
            return

    def _write(self, batch: ReadingBatch | None, rejects: list[Reject], statuses: list[GatewayStatus],
               late: list[tuple[int, int, int, int]]) -> int:
        """In a worker thread, on a writer connection of its own."""
        assert self._writers_pool is not None
        with self._writers_pool.connection(timeout=10) as conn:
            return write_batch(conn, batch, rejects, statuses, self.clock.now(), late)

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
