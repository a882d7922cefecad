"""The MQTT transport under real faults: a broker restart mid-stream, a QoS 0 flood, a consumer that
cannot keep up — exact rows, bounded memory, counted drops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from ingest.metrics import IngestMetrics
from ingest.transport import STAGE, MqttTransport, _Client
from park.health import Health
from park.settings import MqttTarget
from tests.ingest_helpers import TAGS, PrivateBroker, Publisher, prepare, running_ingest, settings_for, until, wait_rows

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def batch(i: int) -> str:
    return json.dumps({"ts": int((T0 + timedelta(seconds=i)).timestamp() * 1000),
                       "points": [{"tag": t, "value": i + k / 100} for k, t in enumerate(TAGS)]})


def test_broker_restart_mid_stream_exact_rows(tmp_path: Path, topic_prefix: str, make_database) -> None:  # type: ignore[no-untyped-def]
    """The broker (the shipped configuration: persistent sessions and queues) is restarted while
    gateways publish and ingest drains: ingest reconnects by itself, resumes its session, and every
    reading is stored exactly once."""
    broker = PrivateBroker(tmp_path)
    broker.start()
    db = make_database("timescaledb", "hwi")
    settings = settings_for(broker.url, db, topic_prefix)
    n = 3000

    async def go() -> None:
        await prepare(db)
        health = Health()
        async with running_ingest(settings, health=health) as svc:
            pub = Publisher(broker.url, persistent=True)
            acked: set[int] = set()  # PUBACKs from the broker, whenever they come
            pub.client.on_publish = lambda c, u, mid, rc, p: acked.add(mid)
            try:
                infos = [pub.client.publish(f"{topic_prefix}/E1/data", batch(i), qos=1) for i in range(n // 3)]
                await until(lambda: svc.metrics.stored._value.get() > 0, what="some rows stored")
                await asyncio.to_thread(broker.stop)  # mid-stream: published, partly drained
                await until(lambda: not svc.connected, what="ingest noticing")
                assert not health.stages[STAGE].ok
                # gateways go on publishing while the broker is away (paho queues and resends)
                infos += [pub.client.publish(f"{topic_prefix}/E1/data", batch(i), qos=1) for i in range(n // 3, n)]
                await asyncio.to_thread(broker.start)
                # paho resends what it could not deliver once it is connected again
                await until(lambda: {i.mid for i in infos} <= acked, within=60, what="everything published")
                assert await wait_rows(db, n * len(TAGS), within=120) == n * len(TAGS)
                assert svc.connected and health.stages[STAGE].ok
                assert svc.transport.session >= 2 and svc.backfill.session >= 2  # both sessions did reconnect
                assert svc.metrics.sessions._value.get() >= 4
            finally:
                pub.close()
        async with await psycopg.AsyncConnection.connect(db) as conn:
            cur = await conn.execute("SELECT count(*), count(DISTINCT (sensor_id, ts)), sum(value) FROM readings")
            count, distinct, total = await cur.fetchone()  # type: ignore[misc]
            assert count == distinct == n * len(TAGS)
            want = sum(i * len(TAGS) + sum(k / 100 for k in range(len(TAGS))) for i in range(n))
            assert total == pytest.approx(want, abs=1e-3)  # each value once: none lost, none doubled

    try:
        asyncio.run(go())
    finally:
        broker.stop()


def _transport(url: str, **kw: object) -> tuple[MqttTransport, IngestMetrics]:
    metrics = IngestMetrics(CollectorRegistry())
    return MqttTransport(MqttTarget.parse(url), f"hw-tr-{uuid.uuid4().hex[:8]}", kw.pop("topic"),  # type: ignore[arg-type]
                         metrics=metrics, **kw), metrics  # type: ignore[arg-type]


def test_qos0_inbox_is_bounded_and_drops_are_counted(mqtt_url: str, topic_prefix: str) -> None:
    """Nobody takes from the inbox: QoS 0 messages stop at the limit, the rest are counted as
    dropped; QoS 1 messages are never dropped (the broker holds them back instead)."""

    async def go() -> None:
        t, metrics = _transport(mqtt_url, topic=f"{topic_prefix}/#", qos0_limit=100)
        task = asyncio.create_task(t.run())
        try:
            await asyncio.wait_for(t.subscribed.wait(), 20)
            pub = Publisher(mqtt_url)
            try:
                pub.publish_many([(f"{topic_prefix}/E1/point/AT-000", str(i)) for i in range(10)])  # QoS 1
                for i in range(500):
                    pub.client.publish(f"{topic_prefix}/E1/point/AT-001", str(i), qos=0)
                pub.publish_many([(f"{topic_prefix}/E1/point/AT-002", "x")])  # QoS 1, after the flood
            finally:
                pub.close()
            await until(lambda: sum(1 for m in t.inbox if m[0].endswith("AT-002")) == 1, what="the last message")
            qos0 = [m for m in t.inbox if m[3] == 0]
            assert len(qos0) == 100
            assert metrics.qos0_dropped._value.get() == 400
            assert sum(1 for m in t.inbox if m[3] == 1) == 11
            # taking makes room again
            t.settle(t.take(len(t.inbox)))
            assert not t.inbox
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(go())


def test_reading_pauses_while_too_much_is_unsettled_and_loses_nothing(mqtt_url: str, topic_prefix: str) -> None:
    """A consumer that settles slowly: the transport holds at most its limit (reading pauses, the
    broker keeps the rest), and every message arrives in the end."""

    async def go() -> None:
        t, metrics = _transport(mqtt_url, topic=f"{topic_prefix}/#", max_held=50)
        task = asyncio.create_task(t.run())
        try:
            await asyncio.wait_for(t.subscribed.wait(), 20)
            pub = Publisher(mqtt_url)
            try:
                await asyncio.to_thread(pub.publish_many, [(f"{topic_prefix}/E1/point/AT-000", str(i))
                                                           for i in range(400)])
            finally:
                pub.close()
            got: list[str] = []
            most = 0
            while len(got) < 400:
                await until(lambda: len(t.inbox) > 0, what="more messages")
                most = max(most, len(t.inbox))
                msgs = t.take(10)
                got += [m[1].decode() for m in msgs]
                t.settle(msgs)
            assert sorted(got, key=int) == [str(i) for i in range(400)]
            assert most <= 50  # reading paused at the limit; the broker held the rest
            assert metrics.paused._value.get() >= 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(go())


def test_every_publish_reaches_the_inbox_as_sent_and_is_acknowledged_once_settled(mqtt_url: str,
                                                                                    topic_prefix: str) -> None:
    """The transport parses PUBLISH packets itself (not through paho's message objects): topics with
    Chinese characters, empty, binary and 200 KiB payloads (spanning several reads), QoS 0 and 1 —
    each arrives with its own topic, bytes and QoS; QoS 1 ones carry the broker's packet id, and once
    settled the broker holds none of them for a reconnect."""
    topic = f"{topic_prefix}/企业E1/point/位号-1"
    sent = [(topic, b"", 1), (topic, bytes(range(256)) * 4, 1), (topic, b"\x30\x02ab" * 10, 0),
            (f"{topic_prefix}/E2/data", b"x" * 200_000, 1), (topic, b"42", 0), (topic, "氯气".encode(), 1)]

    async def go() -> None:
        t, _metrics = _transport(mqtt_url, topic=f"{topic_prefix}/#")
        task = asyncio.create_task(t.run())
        try:
            await asyncio.wait_for(t.subscribed.wait(), 20)
            pub = Publisher(mqtt_url)
            try:
                for tp, payload, qos in sent:  # one by one: each packet is the first of its read
                    pub.client.publish(tp, payload, qos=qos).wait_for_publish(10)
                infos = [pub.client.publish(tp, payload, qos=qos) for tp, payload, qos in sent * 50]
                for info in infos:  # back to back: most packets come whole within a read, some cut by its end
                    info.wait_for_publish(10)
            finally:
                pub.close()
            every = sent * 51
            await until(lambda: len(t.inbox) == len(every), what="every message")
            got = list(t.inbox)
            assert [(m[0], m[1], m[3]) for m in got] == every
            mids = [m[2] for m in got if m[3] == 1]
            assert len(set(mids)) == len(mids) == 4 * 51 and all(0 < mid < 65536 for mid in mids)
            assert all(m[2] == 0 for m in got if m[3] == 0)
            assert t.settle(t.take(len(every))) == 4 * 51  # the QoS 1 ones, in one write
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # settled means acknowledged: the session, resumed, has nothing left to redeliver
        t2, _ = _transport(mqtt_url, topic=f"{topic_prefix}/#")
        t2.client_id = t.client_id
        task = asyncio.create_task(t2.run())
        try:
            await asyncio.wait_for(t2.subscribed.wait(), 20)
            pub = Publisher(mqtt_url)
            try:
                pub.client.publish(f"{topic_prefix}/E1/point/end", b"end", qos=1).wait_for_publish(10)
            finally:
                pub.close()
            await until(lambda: any(m[1] == b"end" for m in t2.inbox), what="the marker")
            assert [m[1] for m in t2.inbox] == [b"end"], "nothing redelivered: every QoS 1 message was acknowledged"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(go())


def _publish_packet(topic: bytes, payload: bytes, mid: int, qos: int) -> bytes:
    """A PUBLISH packet as MQTT 3.1.1 lays it out, the remaining length in as many bytes as it needs."""
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"") + payload
    n, length = len(body), b""
    while True:
        n, b = divmod(n, 128)
        length += bytes([b | (0x80 if n else 0)])
        if not n:
            return bytes([0x30 | qos << 1]) + length + body


def test_publish_packets_are_parsed_whole_from_the_buffer_and_the_rest_left_to_paho() -> None:
    """The read buffer's whole QoS 0/1 PUBLISH packets are handed over in one go, remaining lengths
    of one to three bytes; parsing stops, leaving the rest for paho's reader, at a packet of another
    kind, a QoS 2 one, one cut by the end of the buffer, a malformed one, and when reading pauses."""
    client = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id="parse", manual_ack=True)
    got: list[tuple[bytes, bytes, int, int]] = []
    pause_after: list[int] = []
    client.on_publish_packet = lambda *m: got.append(m) or len(got) in pause_after  # type: ignore[func-returns-value]
    whole = [(b"hw/v1/E1/data", b"x" * 100, 7, 1), (b"hw/v1/\xe4\xbc\x81/p", b"", 0, 0),
             (b"t", bytes(range(256)) * 80, 65535, 1), (b"t/2", b"\x30\x02ab", 0, 0)]  # 2 and 3 length bytes
    packets = b"".join(_publish_packet(*m) for m in whole)

    def parse(rest: bytes) -> int:
        got.clear()
        client._rbuf, client._rpos = packets + rest, 0
        assert client._publishes() == len(got)
        return client._rpos

    for rest in (b"", b"\xd0\x00",  # PINGRESP
                 _publish_packet(b"q2", b"v", 9, 2),  # QoS 2: paho's
                 _publish_packet(b"cut", b"y" * 300, 3, 1)[:-1],  # not whole yet
                 _publish_packet(b"cut", b"y" * 300, 3, 1)[:2],  # its length not whole yet
                 b"\x32\xff\xff\xff\xff\x01",  # a remaining length of five bytes: paho refuses it
                 b"\x32\x03\x00\x05a"):  # topic longer than the packet
        assert parse(rest) == len(packets), rest[:8]
        assert got == whole
    pause_after.append(2)
    assert parse(b"") == len(_publish_packet(*whole[0])) + len(_publish_packet(*whole[1]))
    assert got == whole[:2]
