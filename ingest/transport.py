"""The MQTT transport: persistent broker sessions, driven by the asyncio loop.

Two sessions per broker (:func:`broker_sessions`): the live one on ``{prefix}/#`` as always, and one
for history re-sent after an outage (``{prefix}/+/backfill``, docs/contract.md §1), so that a live
alarm never waits behind a backlog in the broker's per-session order. Each is a :class:`MqttTransport`.

What it owns — the socket, TLS, reconnecting, flow control and acknowledgements — and nothing of
what the messages mean (that is :mod:`ingest.service`: decode → rules → write → acknowledge).

- **Off the event loop.** The TCP connection and the TLS handshake are made in a worker thread
  (:func:`open_socket`), so a broker that is slow, unreachable or stalls mid-handshake never
  freezes the other stages. paho then gets the connected socket through its ``_create_socket``
  seam and is driven by this loop (no paho network thread): acknowledgements go out without a
  cross-thread wake-up.
- **Reads are buffered and drained.** paho reads a packet with three or more ``recv`` calls;
  here one ``recv`` of up to 64 KiB serves hundreds of small packets, and a wake-up keeps
  reading until the socket says it is empty — bytes TLS has already decrypted (``pending()``)
  announce themselves to no selector, and would otherwise wait for the next packet to arrive.
- **Back-off that remembers.** Reconnects back off exponentially with jitter, capped; the count
  is reset only by a subscription the broker accepted, so a broker that takes the TCP connection
  and then refuses the CONNACK (a wrong password, a banned client id) is not hammered.
- **Acknowledgement after commit, on the right connection.** After a reconnect the broker resends
  every unacknowledged QoS 1 message under its old packet id and may give a new message an id
  it sees acknowledged, so a message is acknowledged only on the connection that delivered it;
  one that came on an earlier connection is committed but not acknowledged, and its resent copy
  (a duplicate by then) is.
- **Lean PUBLISH handling.** paho builds a message object (with a lock of its own), formats a
  debug line and matches the topic against per-topic callbacks for every PUBLISH; the session's
  QoS 0 and 1 PUBLISH packets (MQTT 3.1.1) are parsed here straight into the inbox instead
  (:meth:`_Client._handle_publish`), and paho's debug lines are skipped unless its logger shows
  them. QoS 2 (a broker that ignores the subscription's maximum) still goes through paho.
- **Bounded memory.** Reading pauses while too many messages are received and not yet settled;
  QoS 0 messages, which the broker never holds back for us, are capped in the inbox and the
  excess is dropped and counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from ingest.metrics import IngestMetrics
from park.health import Health
from park.settings import MqttTarget

log = logging.getLogger("hazardwatch.ingest.mqtt")

# topic, payload, packet id, QoS, received (UTC epoch µs), session (which connection delivered it)
Message = tuple[str, bytes, int, int, int, int]

STAGE = "ingest.broker"  # our name in park.health
RECV_CHUNK = 65536
CONNECT_TIMEOUT = 10.0  # TCP connect + TLS handshake, in the worker thread
CONNACK_TIMEOUT = 15.0  # a broker that takes the connection but never answers CONNECT
KEEPALIVE = 30
RECONNECT_MIN, RECONNECT_MAX = 0.5, 30.0
PACKETS_PER_WAKE = 1000  # then let the other tasks run; reading continues on the next turn
MAX_HELD = 50_000  # messages received and not yet settled: above this, reading pauses
MAX_HELD_BYTES = 64 * 1024 * 1024
QOS0_LIMIT = 20_000  # QoS 0 messages waiting in the inbox; more are dropped and counted

# Fail at import, not at the first connection, if a paho release moves the seams used here.
assert all(hasattr(mqtt.Client, a) for a in ("_create_socket", "_sock_recv", "_handle_publish", "_easy_log")), \
    "paho-mqtt 2.x required"


def ssl_context(target: MqttTarget) -> ssl.SSLContext:
    """Verifying TLS: the system's trust store, or the CA file given; a client certificate if given."""
    ctx = ssl.create_default_context(cafile=target.ca_file)
    if target.cert_file:
        ctx.load_cert_chain(target.cert_file, target.key_file)
    return ctx


def open_socket(target: MqttTarget, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """Blocking (run it in a thread): a connected socket to the broker, TLS-wrapped and verified
    when the URL says ``mqtts://``."""
    sock = socket.create_connection((target.host, target.port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # acknowledgements are tiny and urgent
        if target.tls:
            return ssl_context(target).wrap_socket(sock, server_hostname=target.host)
        return sock
    except BaseException:
        sock.close()
        raise


def backoff(failures: int) -> float:
    """Seconds to wait before attempt ``failures + 1``: exponential, capped, jittered so that
    services and gateways do not reconnect in lockstep."""
    return min(RECONNECT_MAX, RECONNECT_MIN * 2 ** min(failures - 1, 16)) * random.uniform(0.5, 1.0)


class _Attempt:
    """One connection attempt in a worker thread; abandoned (the stage cancelled meanwhile), whatever
    socket it makes is closed, whichever side comes second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._abandoned = False

    def run(self, target: MqttTarget) -> socket.socket:
        sock = open_socket(target)
        with self._lock:
            if self._abandoned:
                sock.close()
                raise ConnectionAbortedError("connection attempt abandoned")
            self._sock = sock
        return sock

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None


async def _in_thread(target: MqttTarget) -> socket.socket:
    """:func:`open_socket` in a worker thread; cancelled meanwhile, the socket it makes is closed."""
    attempt = _Attempt()
    try:
        return await asyncio.to_thread(attempt.run, target)
    except asyncio.CancelledError:
        attempt.abandon()
        raise


def _system_now_us() -> int:
    return time.time_ns() // 1000


_PUBACK = 0x4002 << 16  # a PUBACK's first two bytes, above its packet id in one big-endian 32-bit word


class _Client(mqtt.Client):
    """paho, with its socket made beforehand (:attr:`prepared`) and its reads buffered.

    :attr:`drained` becomes true when a read found the socket empty; until then the reader keeps
    going even though the descriptor may not be readable (the bytes are in our buffer, or TLS's).
    """

    prepared: socket.socket | None = None
    drained: bool = False
    _rbuf: bytes = b""
    _rpos: int = 0
    # (topic, payload, packet id, QoS) of each QoS 0/1 PUBLISH, instead of paho's on_message; returns
    # whether reading is paused (the packets after it are left in the buffer)
    on_publish_packet: Callable[[bytes, bytes, int, int], bool] | None = None

    def _create_socket(self) -> Any:
        sock, self.prepared = self.prepared, None
        if sock is None:
            raise ConnectionError("no socket prepared: open_socket() first")
        self._rbuf, self._rpos = b"", 0
        return sock

    def _sock_recv(self, bufsize: int) -> bytes:
        pos, buf = self._rpos, self._rbuf
        if pos >= len(buf):
            try:
                buf = super()._sock_recv(RECV_CHUNK)
            except BlockingIOError:
                self.drained = True
                raise
            if not buf:
                return buf  # closed by the broker: paho notices the empty read
            self._rbuf = buf
            pos = 0
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        """Every whole QoS 0/1 PUBLISH packet already in the read buffer, parsed straight from it
        (:meth:`_publishes`); anything else — another kind of packet, one cut by the end of the
        buffer, an empty buffer to refill — is read by paho, a byte at a time from the same buffer."""
        if self._rpos < len(self._rbuf) and self._in_packet["command"] == 0 \
                and self.on_publish_packet is not None and self._protocol == mqtt.MQTTv311 and self._publishes():
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()  # paho's keepalive clock
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._packet_read()

    def _publishes(self) -> int:
        """Hand over the whole QoS 0/1 PUBLISH packets at the head of the buffer (as
        :meth:`_handle_publish` does, packet by packet); stop at the first that is not one, or not
        whole, or not well formed, and leave it to paho. Returns how many were handed over."""
        buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
        handler = self.on_publish_packet
        assert handler is not None
        n = 0
        while pos < end:
            command = buf[pos]
            qos = (command & 0x06) >> 1
            if command & 0xF0 != 0x30 or qos == 2:
                break
            i, length, shift = pos + 1, 0, 0
            while i < end and shift <= 21:  # the remaining length: at most 4 bytes, 7 bits each
                b = buf[i]
                i += 1
                length |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            else:
                break  # cut by the end of the buffer, or longer than 4 bytes: paho's to read or refuse
            stop = i + length
            if stop > end or length < 2:
                break
            t = (buf[i] << 8) | buf[i + 1]
            start = i + 2 + t + (2 if qos else 0)
            if start > stop:
                break
            mid = (buf[start - 2] << 8) | buf[start - 1] if qos else 0
            topic, payload = buf[i + 2:i + 2 + t], buf[start:stop]
            pos = stop
            self._rpos = pos
            n += 1
            try:
                if handler(topic, payload, mid, qos):
                    break  # reading paused: the broker keeps the rest until we settle
            except Exception:  # as paho does with suppress_exceptions: say so, and the session goes on
                log.exception("handling a PUBLISH packet failed")
        return n

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        """A PUBLISH packet: QoS 0 and 1 of MQTT 3.1.1 parsed here (fixed header flags, a two-byte topic
        length, the topic, a packet id for QoS 1, the payload) and handed to :attr:`on_publish_packet`;
        acknowledged later (``manual_ack``). Anything else, and a packet too short for what it says,
        is paho's to handle (it answers a malformed packet by dropping the connection)."""
        handler = self.on_publish_packet
        command, packet = self._in_packet["command"], self._in_packet["packet"]
        qos = (command & 0x06) >> 1
        if handler is None or qos == 2 or self._protocol != mqtt.MQTTv311 or len(packet) < 2:
            return super()._handle_publish()
        n = (packet[0] << 8) | packet[1]
        start = 2 + n + (2 if qos else 0)
        if len(packet) < start:
            return super()._handle_publish()
        mid = (packet[2 + n] << 8) | packet[3 + n] if qos else 0
        try:
            with memoryview(packet) as view:  # paho's bytearray: one copy of the payload, not two
                topic, payload = bytes(view[2:2 + n]), bytes(view[start:])
            handler(topic, payload, mid, qos)
        except Exception:  # as paho does with suppress_exceptions: say so, and the session goes on
            log.exception("handling a PUBLISH packet failed")
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_qos1(self, mids: list[int]) -> None:
        """PUBACKs (MQTT 3.1.1: 0x40, remaining length 2, the packet id) for ``mids``, queued as one
        write: one ``send`` for a whole commit's messages, where paho's ``ack`` sends each alone."""
        if mids:
            self._packet_queue(mqtt.PUBACK, struct.pack(f"!{len(mids)}I", *[_PUBACK | m for m in mids]), 0, 1)

    def _easy_log(self, level: mqtt.LogLevel, fmt: str, *args: Any) -> None:
        """paho's log line, skipped (not formatted) when it is a debug line nobody would see."""
        if level == mqtt.MQTT_LOG_DEBUG and self.on_log is None \
                and (self._logger is None or not self._logger.isEnabledFor(logging.DEBUG)):
            return
        super()._easy_log(level, fmt, *args)


class MqttTransport:
    """A persistent session subscribed to ``topic``; runs until cancelled.

    Arriving messages wait in :attr:`inbox` (take them with :meth:`take`); after their readings
    are committed, :meth:`settle` acknowledges them. ``subscribed`` is set while the broker has
    accepted the subscription (it queues for us from then on). ``backfill``: this is the history
    session, reported by its own metrics (and not told to the rules: the broker's reachability is the
    live session's).
    """

    def __init__(
        self,
        target: MqttTarget,
        client_id: str,
        topic: str,
        *,
        metrics: IngestMetrics,
        health: Health | None = None,
        keepalive: int = KEEPALIVE,
        max_held: int = MAX_HELD,
        max_held_bytes: int = MAX_HELD_BYTES,
        qos0_limit: int = QOS0_LIMIT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        now_us: Callable[[], int] | None = None,
        wake: asyncio.Event | None = None,
        stage: str = STAGE,
        on_state: Callable[[bool], None] | None = None,
        on_settled: Callable[[], None] | None = None,
        backfill: bool = False,
        on_resumed: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self.name = target.name  # the ``broker`` label of the metrics, and the name in alarms and status
        self.stage = stage  # our name in park.health (one per broker when there are several)
        self._on_state = on_state  # told when the session goes up (subscribed) or down
        self._on_resumed = on_resumed  # told when the broker kept the session (before its SUBACK)
        self._on_settled = on_settled  # reports the queue gauge instead (several transports: their sum)
        self._up = False
        self._now_us = now_us or _system_now_us  # stamps each message's arrival
        self.client_id = client_id
        self.topic = topic
        self.backfill = backfill
        self.metrics = metrics
        self.health = health
        self.keepalive = keepalive
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self.qos0_limit = qos0_limit
        self._sleep = sleep
        self.inbox: collections.deque[Message] = collections.deque()
        self.wake = wake or asyncio.Event()  # the inbox has messages (shared by several transports)
        self.subscribed = asyncio.Event()
        self.resumed = asyncio.Event()  # the broker kept our session (and its subscription) from before
        # the broker has held our subscription at some point of this run (subscribed or resumed): from then
        # on it queues for us while we are away, persistent session
        self.established = False
        self.tried = asyncio.Event()  # the first connection attempt has ended: established, refused or failed
        self.connected = False
        self.session = 0  # counts connections the broker accepted
        self.failures = 0  # attempts since the last accepted subscription
        self.attempts = 0
        self.delays: collections.deque[float] = collections.deque(maxlen=64)  # back-off waits, newest last
        self.connecting = False  # a TCP/TLS connect is under way in the worker thread
        self._held = 0
        self._held_bytes = 0
        self._qos0 = 0
        self._paused = False
        self._client: _Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = asyncio.Event()
        self._connack = False
        self._stopping = False
        # the live session's gauges keep their names (dashboards, alert rules); the history session has its own
        self._connected_gauge = (metrics.backfill_connected if backfill else metrics.connected).labels(self.name)
        self._queue_gauge = metrics.backfill_queue if backfill else metrics.queue
        self._connected_gauge.set(0)
        if health is not None:
            health.register(stage)

    def _state(self, up: bool) -> None:
        self._connected_gauge.set(1 if up else 0)
        if up != self._up:
            self._up = up
            if self._on_state is not None:
                self._on_state(up)

    @property
    def held(self) -> int:
        """Messages received and not yet settled."""
        return self._held

    # --- what the pipeline calls ---------------------------------------------------------------
    def take(self, limit: int) -> list[Message]:
        """Up to ``limit`` messages from the inbox, oldest first."""
        inbox = self.inbox
        n = min(limit, len(inbox))
        out = [inbox.popleft() for _ in range(n)]
        if self._qos0:
            self._qos0 -= sum(1 for m in out if m[3] == 0)
        return out

    def settle(self, messages: Iterable[Message]) -> int:
        """``messages`` are committed: acknowledge those of QoS 1 that came on this connection, and
        let reading go on. Returns how many were acknowledged."""
        client = self._client
        live = client is not None and client.socket() is not None and self.connected
        session = self.session
        n = nbytes = other = 0
        mids: list[int] = []
        for m in messages:
            n += 1
            nbytes += len(m[1])
            if m[3] and live and m[5] == session:
                if m[3] == 1:
                    mids.append(m[2])
                else:
                    client.ack(m[2], m[3])  # type: ignore[union-attr]
                    other += 1
        acked = len(mids) + other
        if mids:
            client.ack_qos1(mids)  # type: ignore[union-attr]
        self._held -= n
        self._held_bytes -= nbytes
        if self._on_settled is not None:
            self._on_settled()
        else:
            self._queue_gauge.set(self._held)
        if self._paused and self._held < self.max_held // 2 and self._held_bytes < self.max_held_bytes // 2:
            self._resume()
        return acked

    # --- paho callbacks (on the event loop) ------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        """What paho still delivers itself (QoS 2): as :meth:`_on_publish`."""
        self._on_publish(msg._topic, bytes(msg.payload), msg.mid, msg.qos)

    def _on_publish(self, raw_topic: bytes, payload: bytes, mid: int, qos: int) -> bool:
        """Into the inbox; returns whether reading is paused."""
        if qos == 0:
            if self._qos0 >= self.qos0_limit:
                self.metrics.qos0_dropped.inc()
                return self._paused
            self._qos0 += 1
        try:
            topic = raw_topic.decode("utf-8")
        except UnicodeDecodeError:  # the broker should have refused it: let the decoder reject it
            topic = raw_topic.decode("utf-8", "replace")
        self.inbox.append((topic, payload, mid, qos, self._now_us(), self.session))
        self._held += 1
        self._held_bytes += len(payload)
        if self._held >= self.max_held or self._held_bytes >= self.max_held_bytes:
            self._pause()
        self.wake.set()
        return self._paused

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: mqtt.ReasonCode, properties: object) -> None:
        if reason.is_failure:
            # keep self.failures: only an accepted subscription resets the back-off
            log.warning("broker %s:%d refused the connection: %s", self.target.host, self.target.port, reason)
            self._degraded(f"broker refused the connection: {reason}")
            self._close_soon()  # not inside paho's callback: it holds a lock that closing takes
            return
        self._connack = True
        self.session += 1
        if flags.session_present:
            self.resumed.set()
            self.established = True
            self.tried.set()
            if self._on_resumed is not None:
                self._on_resumed()
        if flags.session_present and self.inbox:
            # the broker resends every unacknowledged QoS 1 message of its session: drop our copies
            # not yet decoded rather than handle each twice (QoS 0 ones are never resent: keep them)
            keep = [m for m in self.inbox if m[3] == 0]
            for m in self.inbox:
                if m[3]:
                    self._held -= 1
                    self._held_bytes -= len(m[1])
            self.inbox.clear()
            self.inbox.extend(keep)
        self.metrics.sessions.inc()
        # subscribe on every connect: a broker that lost the session must not leave us deaf
        client.subscribe([(self.topic, 1)])
        log.info("broker %s session up (resumed: %s); subscribing to %s", self.name, flags.session_present, self.topic)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: list[mqtt.ReasonCode],
                      properties: object) -> None:
        if any(r.is_failure for r in reasons):
            log.error("broker refused the subscription to %s: %s", self.topic, reasons)
            self._degraded(f"broker refused the subscription to {self.topic}")
            self._close_soon()
            return
        # ready only now: before the SUBACK the broker would not queue a message for us
        self.failures = 0
        self.connected = True
        self.subscribed.set()  # before telling: a listener may look at it
        self.established = True
        self.tried.set()
        self._state(True)
        if self.health is not None:
            self.health.ok(self.stage)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason: mqtt.ReasonCode, properties: object) -> None:
        self._lost(str(reason))

    def _socket_open(self, c: mqtt.Client, u: object, sock: Any) -> None:
        assert self._loop is not None
        self._paused = False  # a new connection reads; the budget check pauses it again
        self._loop.add_reader(sock, self._readable)
        if self._held >= self.max_held or self._held_bytes >= self.max_held_bytes:
            self._pause()

    def _socket_close(self, c: mqtt.Client, u: object, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._lost("connection closed")
        self._closed.set()

    def _register_write(self, c: mqtt.Client, u: object, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, self._writable)

    def _unregister_write(self, c: mqtt.Client, u: object, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _readable(self) -> None:
        client = self._client
        assert client is not None and self._loop is not None
        client.drained = False
        for _ in range(PACKETS_PER_WAKE):
            if client.drained or self._paused or client.socket() is None:
                return
            client.loop_read()
        # more may wait in our buffer or in TLS's, which no readiness event will announce
        self._loop.call_soon(self._readable)

    def _writable(self) -> None:
        if self._client is not None:
            self._client.loop_write()

    # --- the connection ----------------------------------------------------------------------------
    def _make_client(self) -> _Client:
        client = _Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,  # persistent session: the broker keeps our queue across restarts
            protocol=mqtt.MQTTv311,
            manual_ack=True,  # acknowledge only after the readings are committed
        )
        # an exception escaping a callback would leave paho's packet state half-handled; paho logs
        # it (to our logger) and carries on instead
        client.suppress_exceptions = True
        client.enable_logger(logging.getLogger("hazardwatch.ingest.paho"))
        t = self.target
        if t.username:
            client.username_pw_set(t.username, t.password.get_secret_value() if t.password else None)
        client.on_message = self._on_message
        client.on_publish_packet = self._on_publish
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        return client

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = client = self._make_client()
        t = self.target
        try:
            while True:
                if self.failures:
                    delay = backoff(self.failures)
                    self.delays.append(delay)
                    await self._sleep(delay)
                self.failures += 1  # reset only by an accepted subscription
                self.attempts += 1
                self.connecting = True
                try:
                    sock = await _in_thread(t)
                except (OSError, ValueError) as e:  # ssl errors are OSErrors; CertificateError a ValueError
                    self._unreachable(e)
                    continue
                finally:
                    self.connecting = False
                self._closed.clear()
                self._connack = False
                client.prepared = sock
                try:
                    client.connect(t.host, t.port, keepalive=self.keepalive)
                except (OSError, ValueError) as e:
                    with contextlib.suppress(OSError):
                        sock.close()
                    self._unreachable(e)
                    continue
                await self._hold_session(client)
        finally:
            self._stopping = True
            self._shutdown(client)

    async def _hold_session(self, client: _Client) -> None:
        """Keep the connection alive until it closes; give up on a broker that never answers CONNECT."""
        assert self._loop is not None
        deadline = self._loop.time() + CONNACK_TIMEOUT
        while client.socket() is not None:
            if not self._connack and self._loop.time() > deadline:
                log.warning("broker %s:%d did not answer CONNECT within %.0f s; reconnecting", self.target.host,
                            self.target.port, CONNACK_TIMEOUT)
                self._degraded("broker does not answer")
                self._close()
                break
            client.loop_misc()  # keepalive pings, and noticing a dead broker
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives
            # as the wait ends, and the stage would never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._closed.wait()

    def _close_soon(self) -> None:
        assert self._loop is not None
        self._loop.call_soon(self._close)

    def _close(self) -> None:
        client = self._client
        if client is not None and client.socket() is not None:
            client._sock_close()

    def _unreachable(self, e: BaseException) -> None:
        self.tried.set()
        self._state(False)
        msg = f"broker {self.target.host}:{self.target.port} unreachable ({type(e).__name__}: {e})"
        if self.failures <= 3 or self.failures % 20 == 0:
            log.warning("%s; retrying", msg)
        self._degraded(msg[:300])

    def _lost(self, why: str) -> None:
        self.tried.set()
        was = self.connected
        self.connected = False
        self.subscribed.clear()
        self.resumed.clear()
        if not self._stopping:
            self._state(False)
        else:
            self._connected_gauge.set(0)
        if self._stopping:
            return
        if was:
            log.warning("broker %s connection lost (%s); reconnecting", self.name, why)
            self._degraded(f"broker {self.name} connection lost ({why})")
        elif self.health is None or self.health.register(self.stage).ok:
            # closed before the session was up: a TLS alert after the handshake (no client
            # certificate), a refused CONNECT; paho logged the cause
            self._degraded(f"broker {self.target.host}:{self.target.port} closed the connection before the session "
                           f"was established ({why})")

    def _degraded(self, reason: str) -> None:
        if self.health is not None and not self._stopping:
            self.health.degraded(self.stage, reason)

    def _pause(self) -> None:
        client = self._client
        if self._paused or client is None or self._loop is None:
            return
        self._paused = True
        self.metrics.paused.inc()
        sock = client.socket()
        if sock is not None:
            self._loop.remove_reader(sock)
        log.info("%d messages (%d MB) received and not yet committed: reading from the broker paused",
                 self._held, self._held_bytes >> 20)

    def _resume(self) -> None:
        client = self._client
        if not self._paused or client is None or self._loop is None:
            return
        self._paused = False
        sock = client.socket()
        if sock is not None:
            self._loop.add_reader(sock, self._readable)
            self._loop.call_soon(self._readable)

    def _shutdown(self, client: _Client) -> None:
        self.connected = False
        self._up = False  # a restarted stage starts unreachable and says so when its session is up
        self._connected_gauge.set(0)
        self.subscribed.clear()
        with contextlib.suppress(Exception):
            if client.socket() is not None:
                client.disconnect()
                client.loop_write()
        with contextlib.suppress(Exception):
            client._sock_close()
        if client.prepared is not None:
            client.prepared.close()
            client.prepared = None


# --- the sessions for one broker ---------------------------------------------------------------------
BACKFILL_SUFFIX = "-backfill"  # the history session's client id: the live one's, plus this
# the history session's inflight window, smaller than the live one's: while hazardwatch catches up with
# a backlog, history never fills memory and waits its turn without holding up live data
BACKFILL_MAX_HELD = 5_000
BACKFILL_MAX_HELD_BYTES = 16 * 1024 * 1024


def live_filter(prefix: str) -> str:
    """Every topic under ``prefix``, as before v1.2: the contract's topics are decoded, any other is
    rejected with a reason (contract §1); the live copies of ``…/backfill`` are acknowledged undecoded."""
    return f"{prefix.strip('/')}/#"


def backfill_filter(prefix: str) -> str:
    return f"{prefix.strip('/')}/+/backfill"


@dataclass(frozen=True, slots=True)
class BrokerSessions:
    """One broker's sessions: ``live`` (every topic) and ``backfill`` (history only)."""

    live: MqttTransport
    backfill: MqttTransport

    def __iter__(self) -> Iterator[MqttTransport]:
        return iter((self.live, self.backfill))


def broker_sessions(target: MqttTarget, client_id: str, prefix: str, *, metrics: IngestMetrics,
                    health: Health | None = None, now_us: Callable[[], int] | None = None,
                    wake: asyncio.Event | None = None, stage: str = STAGE,
                    on_state: Callable[[bool], None] | None = None,
                    on_settled: Callable[[], None] | None = None,
                    on_history: Callable[[], None] | None = None) -> BrokerSessions:
    """The persistent sessions hazardwatch keeps with one broker, waking ``wake`` when messages arrive.

    The live session (``client_id``) takes ``{prefix}/#`` as always; the history session (``client_id``
    + ``-backfill``, so every instance of one installation resumes the same one) takes
    ``{prefix}/+/backfill`` with a smaller inflight window. Both acknowledge only after the commit
    holding their readings. ``on_state`` hears the live session only; ``on_history`` hears the history
    session go up, down, or resumed."""
    wake = wake or asyncio.Event()
    live = MqttTransport(target, client_id, live_filter(prefix), metrics=metrics, health=health, now_us=now_us,
                         wake=wake, stage=stage, on_state=on_state, on_settled=on_settled)
    history = MqttTransport(target, client_id + BACKFILL_SUFFIX, backfill_filter(prefix), metrics=metrics,
                            health=health, now_us=now_us, wake=wake, stage=f"{stage}.backfill",
                            on_settled=on_settled, backfill=True, max_held=BACKFILL_MAX_HELD,
                            max_held_bytes=BACKFILL_MAX_HELD_BYTES, on_resumed=on_history,
                            on_state=None if on_history is None else (lambda up: on_history()))
    return BrokerSessions(live, history)
