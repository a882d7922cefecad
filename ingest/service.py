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
import contextlib
import logging
import random
import socket
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
RECONNECT_MIN, RECONNECT_MAX = 0.5, 30.0
READS_PER_WAKE = 64
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
        self._client: mqtt.Client | None = None
        self._stopping = False
        self._last_reject_log = -REJECT_LOG_EVERY
        self._rejects_since_log = 0

    # --- paho callbacks (run on the event loop: paho's socket is driven by asyncio) ----------------
    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._inbox.append((msg.topic, bytes(msg.payload), msg.mid, msg.qos, time.time_ns() // 1000))
        self._wake.set()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: mqtt.ReasonCode, properties: object) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
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
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason: mqtt.ReasonCode, properties: object) -> None:
        self.connected = False
        self.metrics.connected.set(0)
        self.subscribed.clear()
        if not self._stopping:
            log.warning("broker connection lost (%s); reconnecting", reason)

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
        # paho's socket is driven by this event loop (no network thread): acknowledgements go out
        # without a cross-thread wake-up, and nothing contends for the GIL per message
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        return client

    def _socket_open(self, c: mqtt.Client, u: object, sock: Any) -> None:
        asyncio.get_running_loop().add_reader(sock, self._readable)

    def _socket_close(self, c: mqtt.Client, u: object, sock: Any) -> None:
        asyncio.get_running_loop().remove_reader(sock)

    def _register_write(self, c: mqtt.Client, u: object, sock: Any) -> None:
        asyncio.get_running_loop().add_writer(sock, self._writable)

    def _unregister_write(self, c: mqtt.Client, u: object, sock: Any) -> None:
        asyncio.get_running_loop().remove_writer(sock)

    def _readable(self) -> None:
        client = self._client
        assert client is not None
        sock = client.socket()
        if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
            client.loop_read()
            return
        # several packets per wake-up, as long as bytes are waiting (peeking costs no copy)
        for _ in range(READS_PER_WAKE):
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    client.loop_read()  # closed: let paho notice and clean up
                    return
            except BlockingIOError:
                return
            except OSError:
                client.loop_read()
                return
            client.loop_read()
            if client.socket() is None:
                return

    def _writable(self) -> None:
        assert self._client is not None
        self._client.loop_write()

    async def _connection(self) -> None:
        """Connect, keep alive, and reconnect with capped, jittered backoff (gateways and services must
        not reconnect in lockstep); the session is persistent, so the broker keeps our queue meanwhile."""
        client = self._client
        assert client is not None
        target = self.settings.mqtt
        failures = 0
        while True:
            if client.socket() is None:
                if failures:
                    delay = min(RECONNECT_MAX, RECONNECT_MIN * 2 ** min(failures, 8)) * random.uniform(0.5, 1.0)
                    await asyncio.sleep(delay)
                try:
                    client.connect(target.host, target.port, keepalive=30)
                    failures = 0
                except OSError as e:
                    failures += 1
                    self.metrics.connected.set(0)
                    if failures <= 3 or failures % 20 == 0:
                        log.warning("broker %s:%d unreachable (%s); retrying", target.host, target.port, e)
                    continue
            client.loop_misc()  # keepalive pings, and noticing a dead broker
            await asyncio.sleep(1.0)

    # --- asyncio side -------------------------------------------------------------------------
    async def run(self) -> None:
        self._client = self._make_client()
        try:
            writes: asyncio.Queue[_Work] = asyncio.Queue(maxsize=2)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._connection(), name="ingest-mqtt")
                tg.create_task(self._decode_loop(writes), name="ingest-decode")
                tg.create_task(self._write_loop(writes), name="ingest-write")
        finally:
            self._stopping = True
            self.connected = False
            self.metrics.connected.set(0)
            sock = self._client.socket()
            self._client.disconnect()
            if sock is not None:
                with contextlib.suppress(Exception):
                    self._client.loop_write()
                    asyncio.get_running_loop().remove_reader(sock)
                    asyncio.get_running_loop().remove_writer(sock)

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
