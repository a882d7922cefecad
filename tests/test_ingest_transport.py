"""The MQTT transport under real faults: a broker restart mid-stream, a QoS 0 flood, a consumer that
cannot keep up — exact rows, bounded memory, counted drops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from ingest.metrics import IngestMetrics
from ingest.transport import STAGE, MqttTransport
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
                for tp, payload, qos in sent:
                    pub.client.publish(tp, payload, qos=qos).wait_for_publish(10)
            finally:
                pub.close()
            await until(lambda: len(t.inbox) == len(sent), what="every message")
            got = list(t.inbox)
            assert [(m[0], m[1], m[3]) for m in got] == sent
            mids = [m[2] for m in got if m[3] == 1]
            assert len(set(mids)) == 4 and all(0 < mid < 65536 for mid in mids)
            assert all(m[2] == 0 for m in got if m[3] == 0)
            assert t.settle(t.take(len(sent))) == 4  # the QoS 1 ones
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
