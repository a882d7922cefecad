"""The real servers the suite runs against, and the broker configuration hazardwatch ships."""

from __future__ import annotations

import threading
import time
import uuid
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
import pytest

from tests.conftest import private_broker


def test_timescaledb_is_real_and_apache_edition(make_database) -> None:  # type: ignore[no-untyped-def]
    url = make_database("timescaledb", "hwsvc")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SHOW timescaledb.license").fetchone() == ("apache",)
        conn.execute("CREATE TABLE m (ts timestamptz NOT NULL, v float8)")
        conn.execute("SELECT create_hypertable('m', 'ts')")
        conn.execute("INSERT INTO m SELECT t, 1 FROM generate_series(now() - interval '3 hours', now(),"
                     " interval '1 minute') t")
        n = conn.execute("SELECT count(*) FROM (SELECT time_bucket('1 hour', ts) FROM m GROUP BY 1) b").fetchone()
        assert n is not None and n[0] in (4, 5)


def _client(url: str, client_id: str, clean: bool, inflight: int = 20) -> mqtt.Client:
    u = urlsplit(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                    protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(inflight)
    c.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=30)
    return c


def test_broker_round_trip_qos1(mqtt_url: str, topic_prefix: str) -> None:
    got: list[bytes] = []
    done = threading.Event()
    sub = _client(mqtt_url, f"svc-sub-{uuid.uuid4().hex[:6]}", True)
    sub.on_message = lambda c, u, m: (got.append(m.payload), done.set())
    sub.loop_start()
    try:
        sub.subscribe(f"{topic_prefix}/E1/point/X", qos=1)[1]
        time.sleep(0.3)
        pub = _client(mqtt_url, f"svc-pub-{uuid.uuid4().hex[:6]}", True)
        pub.loop_start()
        pub.publish(f"{topic_prefix}/E1/point/X", b"1.5", qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        assert done.wait(5) and got == [b"1.5"]
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_shipped_config_queues_far_more_than_1000_for_an_offline_session(mqtt_url: str, topic_prefix: str) -> None:
    """Debian's default drops QoS 1 messages past 1,000 for an offline persistent session."""
    if not private_broker(mqtt_url):
        pytest.fail("HW_TEST_MQTT_URL is the system broker; run through `bash tests/run.sh`, which starts "
                    "the private broker with deploy/mosquitto/hazardwatch.conf")
    cid = f"svc-persist-{uuid.uuid4().hex[:6]}"
    topic = f"{topic_prefix}/E1/point/Q"
    sub = _client(mqtt_url, cid, clean=False)
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    time.sleep(0.3)
    sub.loop_stop()
    sub.disconnect()
    n = 5000
    pub = _client(mqtt_url, f"svc-pub-{uuid.uuid4().hex[:6]}", True, inflight=1000)
    pub.loop_start()
    infos = [pub.publish(topic, str(i).encode(), qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()
    got: set[int] = set()
    all_in = threading.Event()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        got.add(int(m.payload))
        if len(got) == n:
            all_in.set()

    sub = _client(mqtt_url, cid, clean=False)
    sub.on_message = on_message
    sub.loop_start()
    try:
        all_in.wait(30)
        assert len(got) == n, f"the broker kept {len(got)} of {n} queued messages"
    finally:
        sub.loop_stop()
        sub.disconnect()
        # end the persistent session so it does not linger on the broker
        clean = _client(mqtt_url, cid, clean=True)
        clean.disconnect()
