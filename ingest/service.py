"""The ingest stage: MQTT (persistent session, manual acknowledgement) → decode → rules sink → COPY → ack.

paho-mqtt's network thread only queues what arrives; the asyncio side decodes in batches, hands
the readings to the rule engine at once (alarms never wait for the database), writes them, and
acknowledges each message to the broker only after the transaction holding its readings has
committed. A crash at any moment therefore loses nothing: the broker redelivers what was not
acknowledged, and the database keeps one row per (sensor, ts). While the database is down
nothing is acknowledged, the broker's in-flight window fills and stops delivery, and memory stays
bounded; writing resumes by itself.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from ingest.decode import DEFAULT_MAX_PAYLOAD, Decoded, Decoder
from ingest.metrics import IngestMetrics
from ingest.writer import write_readings, write_rejects, write_statuses
from park.model import Park
from park.settings import Settings
from park.types import GatewayStatus, ReadingBatch

log = logging.getLogger("hazardwatch.ingest")

MAX_BATCH_READINGS = 50_000
MAX_BATCH_MESSAGES = 8_000  # below the shipped broker's in-flight window (10,000)
RECONNECT_MIN, RECONNECT_MAX = 1, 30
DB_RETRY_MIN, DB_RETRY_MAX = 0.25, 10.0
REJECT_LOG_EVERY = 10.0  # seconds between log lines about rejected input


@dataclass(slots=True)
class _Work:
    decoded: Decoded
    mids: list[tuple[int, int]] = field(default_factory=list)  # (mid, qos) to acknowledge after commit


class IngestService:
    """Runs until cancelled; ``connected`` tells readiness."""

    def __init__(
        self,
        *,
        settings: Settings,
        park: Park,
        pool: AsyncConnectionPool,
        sink: asyncio.Queue[ReadingBatch | GatewayStatus] | None,
        registry: CollectorRegistry,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.sink = sink
        self.metrics = IngestMetrics(registry)
        self.decoder = Decoder(park, settings.mqtt_prefix, max_payload)
        self.connected = False
        self.subscribed = asyncio.Event()  # set while the subscription is acknowledged
        self._inbox: collections.deque[tuple[str, bytes, int, int, int]] = collections.deque()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._failures = 0
        self._last_reject_log = -REJECT_LOG_EVERY
        self._rejects_since_log = 0

    # --- paho's thread ------------------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._inbox.append((msg.topic, bytes(msg.payload), msg.mid, msg.qos, time.time_ns() // 1000))
        # append first, then look: the decoder clears the event only after finding the inbox empty
        if not self._wake.is_set() and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: mqtt.ReasonCode, properties: object) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        self._failures = 0
        client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
        p = self.settings.mqtt_prefix
        # subscribe on every connect: a broker that lost the session must not leave us deaf.
        # {p}/# covers the contract's data, point/+ and status topics and also lets a gateway
        # publishing to a wrong topic be seen, rejected and counted instead of silently ignored.
        client.subscribe([(f"{p}/#", 1)])
        log.info("broker session up (resumed: %s); subscribing to %s/#", flags.session_present, p)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: list[mqtt.ReasonCode],
                      properties: object) -> None:
        if any(r.is_failure for r in reasons):
            log.error("broker refused the subscription to %s/#: %s", self.settings.mqtt_prefix, reasons)
            return
        # ready only now: before the SUBACK the broker would not queue a message for us
        self.connected = True
        self.metrics.connected.set(1)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.subscribed.set)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason: mqtt.ReasonCode, properties: object) -> None:
        self.connected = False
        self.metrics.connected.set(0)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.subscribed.clear)
        self._failures += 1
        # capped, jittered exponential backoff: gateways and services must not reconnect in lockstep
        delay = min(RECONNECT_MAX, RECONNECT_MIN * 2 ** min(self._failures, 8)) * random.uniform(0.5, 1.0)
        client.reconnect_delay_set(max(1, round(delay)), max(1, round(delay)))
        if self._failures <= 3 or self._failures % 20 == 0:
            log.warning("broker connection lost (%s); reconnecting in ~%.0fs", reason, delay)

    def _make_client(self) -> mqtt.Client:
        target = self.settings.mqtt
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.settings.mqtt_client_id,
            clean_session=False,  # persistent session: the broker keeps our queue across restarts
            protocol=mqtt.MQTTv311,
            manual_ack=True,  # acknowledge only after the readings are committed
        )
        if target.username:
            client.username_pw_set(target.username, target.password.get_secret_value() if target.password else None)
        if target.tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
        client.connect_async(target.host, target.port, keepalive=30)
        return client

    # --- asyncio side -------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = self._make_client()
        self._client.loop_start()
        try:
            writes: asyncio.Queue[_Work] = asyncio.Queue(maxsize=2)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._decode_loop(writes), name="ingest-decode")
                tg.create_task(self._write_loop(writes), name="ingest-write")
        finally:
            self.connected = False
            self.metrics.connected.set(0)
            self._client.disconnect()
            self._client.loop_stop()

    async def _decode_loop(self, writes: asyncio.Queue[_Work]) -> None:
        inbox = self._inbox
        decode = self.decoder.decode
        while True:
            if not inbox:
                self._wake.clear()
                if not inbox:
                    await self._wake.wait()
            work = _Work(Decoded())
            out = work.decoded
            mids = work.mids
            # take what has arrived, up to a batch; under load batches grow while the writer is busy
            while inbox and len(mids) < MAX_BATCH_MESSAGES and len(out) < MAX_BATCH_READINGS:
                topic, payload, mid, qos, received_us = inbox.popleft()
                decode(out, topic, payload, received_us)
                mids.append((mid, qos))
            if not mids:
                continue
            self.metrics.messages.inc(len(mids))
            self.metrics.queue.set(len(inbox))
            if len(out):
                batch = out.batch()
                self.metrics.readings.inc(len(batch))
                self.metrics.lag.set(time.time() - float(batch.ts_us.max()) / 1e6)
                if self.sink is not None:
                    await self.sink.put(batch)
            for status in out.statuses:
                self.metrics.status.labels(str(status.online).lower()).inc()
                if self.sink is not None:
                    await self.sink.put(status)
            if out.seq_gaps:
                self.metrics.seq_gaps.inc(out.seq_gaps)
            if out.rejects:
                self._count_rejects(out)
            await writes.put(work)

    async def _write_loop(self, writes: asyncio.Queue[_Work]) -> None:
        while True:
            work = await writes.get()
            await self._commit(work)
            client = self._client
            assert client is not None
            for mid, qos in work.mids:
                if qos > 0:
                    client.ack(mid, qos)

    async def _commit(self, work: _Work) -> None:
        """Write until it succeeds: nothing is acknowledged before, so waiting loses nothing."""
        out = work.decoded
        batch = out.batch() if len(out) else None
        delay = DB_RETRY_MIN
        while True:
            t0 = time.perf_counter()
            try:
                async with self.pool.connection(timeout=10) as conn, conn.transaction():
                    new = 0
                    if batch is not None:
                        new, _dups = await write_readings(conn, batch)
                    await write_rejects(conn, out.rejects, datetime.now(UTC))
                    await write_statuses(conn, out.statuses)
            except Exception as e:  # database down or restarting: wait and retry the same work
                self.metrics.db_errors.inc()
                log.warning("writing %d readings failed (%s: %s); retrying in %.1fs",
                            len(out), type(e).__name__, str(e).strip()[:200], delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(DB_RETRY_MAX, delay * 2)
                continue
            self.metrics.batches.inc()
            self.metrics.batch_seconds.observe(time.perf_counter() - t0)
            self.metrics.batch_rows.observe(len(out))
            self.metrics.stored.inc(new)
            self.metrics.duplicates.inc(len(out) - new)
            return

    def _count_rejects(self, out: Decoded) -> None:
        for r in out.rejects:
            self.metrics.rejected.labels(r.reason.value).inc()
        self._rejects_since_log += len(out.rejects)
        now = time.monotonic()
        if now - self._last_reject_log >= REJECT_LOG_EVERY:
            first = out.rejects[0]
            log.warning("rejected %d inputs since the last report, e.g. %s on %s: %s", self._rejects_since_log,
                        first.reason.value, first.topic, first.detail)
            self._last_reject_log = now
            self._rejects_since_log = 0
