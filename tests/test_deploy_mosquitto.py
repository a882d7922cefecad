"""`hazardwatch deploy mosquitto` against the real Mosquitto: ACL, anonymous refused, TLS only outside.

The module starts one private broker on free ports in its tmp dir with the generated configuration.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hazardwatch.cli import main as cli
from hazardwatch.deploy.mosquitto import (
    MIN_QUEUED_MESSAGES,
    passwd_line,
    plan_accounts,
    queue_limits,
    read_credentials,
)
from park.sitefile import parse_site
from tests.deploy_helpers import SecuredBroker as Broker
from tests.deploy_helpers import secured_broker

SITE = """\
site: {name: 测试园区}
districts:
  - code: D1
    name: 一区
    towns:
      - code: T1
        name: 一镇
        enterprises:
          - code: E001
            name: 一号化工
            sensors: [{tag: AT-2001, kind: gas_toxic, gas: H2S}]
          - code: E002
            name: 二号化工
            sensors: [{tag: AT-1, kind: gas_combustible, interval: 1s}]
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with secured_broker(tmp_path_factory.mktemp("broker"), SITE) as b:
        yield b


def _client(user: str | None, password: str | None, *, ca: str | None = None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv311)
    if user is not None:
        c.username_pw_set(user, password)
    if ca is not None:
        c.tls_set(ca_certs=ca)
    return c


def _connect(c: mqtt.Client, port: int) -> mqtt.ReasonCode:
    """Connect and wait for the CONNACK; the broker's answer."""
    got: list[mqtt.ReasonCode] = []
    done = threading.Event()

    def on_connect(client: mqtt.Client, u: object, flags: object, reason: mqtt.ReasonCode, p: object) -> None:
        got.append(reason)
        done.set()

    c.on_connect = on_connect
    c.connect("localhost" if c._ssl else "127.0.0.1", port, keepalive=30)
    c.loop_start()
    assert done.wait(15), "no CONNACK within 15 s"
    return got[0]


class Subscriber:
    """hazardwatch's own account on the internal listener, collecting what it receives."""

    def __init__(self, b: Broker) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.client = _client("hazardwatch", b.passwords["hazardwatch"])
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        assert not _connect(self.client, b.internal).is_failure
        self.client.subscribe("hw/v1/#", qos=1)
        assert subscribed.wait(15)

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.got.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def wait_for(self, payload: bytes) -> list[tuple[str, bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: any(p == payload for _, p in self.got), timeout=15), (
                f"{payload!r} never arrived; got {self.got}")
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(c: mqtt.Client, topic: str, payload: bytes) -> None:
    c.publish(topic, payload, qos=1).wait_for_publish(15)


def test_gateway_with_its_credentials_gets_through_tls_and_only_to_its_own_topics(broker: Broker) -> None:
    sub = Subscriber(broker)
    gw = _client("E001", broker.passwords["E001"], ca=broker.ca)
    try:
        assert not _connect(gw, broker.external).is_failure
        marker = uuid.uuid4().hex.encode()
        # Mosquitto handles one client's messages in order: once the marker arrived, the forbidden
        # publish before it would have arrived too, had the ACL let it through
        _publish(gw, "hw/v1/E002/data", b'{"forged": true}')
        _publish(gw, "hw/v1/E001/point/AT-2001", marker)
        got = sub.wait_for(marker)
        assert ("hw/v1/E001/point/AT-2001", marker) in got
        assert not [t for t, _ in got if t.startswith("hw/v1/E002/")], got
    finally:
        gw.disconnect()
        gw.loop_stop()
        sub.close()


def test_other_enterprise_and_service_account_cannot_publish_outside_their_grant(broker: Broker) -> None:
    sub = Subscriber(broker)
    gw = _client("E002", broker.passwords["E002"], ca=broker.ca)
    svc = _client("hazardwatch", broker.passwords["hazardwatch"])
    try:
        assert not _connect(gw, broker.external).is_failure
        assert not _connect(svc, broker.internal).is_failure
        _publish(svc, "hw/v1/E001/data", b"from-the-service")  # hazardwatch only reads
        _publish(gw, "hw/v1/E001/data", b"from-E002")
        marker = uuid.uuid4().hex.encode()
        _publish(gw, "hw/v1/E002/status", marker)
        got = sub.wait_for(marker)
        assert [p for _, p in got if p in (b"from-the-service", b"from-E002")] == []
    finally:
        for c in (gw, svc):
            c.disconnect()
            c.loop_stop()
        sub.close()


def test_a_gateway_re_sends_history_on_its_own_backfill_topic_to_hazardwatchs_history_session(
        broker: Broker) -> None:
    """docs/contract.md §1's …/backfill: E001 may publish its history there and hazardwatch's account may
    hold both its sessions with the filters ingest uses; the history reaches the history session (and the
    live session, on ``{prefix}/#``, gets its copy), live data the live session only, and E002 cannot
    re-send history as E001."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from ingest.metrics import IngestMetrics
    from ingest.transport import broker_sessions
    from park.settings import MqttTarget

    target = MqttTarget.parse(f"mqtt://hazardwatch:{broker.passwords['hazardwatch']}@127.0.0.1:{broker.internal}")
    e001 = _client("E001", broker.passwords["E001"], ca=broker.ca)
    e002 = _client("E002", broker.passwords["E002"], ca=broker.ca)
    marker, forged, live = (uuid.uuid4().hex.encode() for _ in range(3))
    e002_marker = uuid.uuid4().hex.encode()

    async def go() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        sessions = broker_sessions(target, f"hbackfill-{uuid.uuid4().hex[:6]}", "hw/v1",
                                   metrics=IngestMetrics(CollectorRegistry()))
        tasks = [asyncio.create_task(t.run()) for t in sessions]
        try:
            for t in sessions:  # the service account may subscribe to every filter of both sessions
                await asyncio.wait_for(t.subscribed.wait(), 15)
            for gw in (e001, e002):
                assert not (await asyncio.to_thread(_connect, gw, broker.external)).is_failure
            # Mosquitto handles one client's messages in order: once E002's own history arrived, its
            # forged publish before it would have arrived too, had the ACL let it through
            await asyncio.to_thread(_publish, e002, "hw/v1/E001/backfill", forged)
            await asyncio.to_thread(_publish, e002, "hw/v1/E002/backfill", e002_marker)
            await asyncio.to_thread(_publish, e001, "hw/v1/E001/backfill", marker)
            await asyncio.to_thread(_publish, e001, "hw/v1/E001/data", live)
            deadline = asyncio.get_running_loop().time() + 15

            def got() -> tuple[set[bytes], set[bytes]]:
                return {m[1] for m in sessions.backfill.inbox}, {m[1] for m in sessions.live.inbox}

            while not ({marker, e002_marker} <= got()[0] and {marker, live} <= got()[1]):
                assert asyncio.get_running_loop().time() < deadline, f"never arrived; got {got()}"
                await asyncio.sleep(0.02)
            return ([(m[0], m[1]) for m in sessions.backfill.inbox], [(m[0], m[1]) for m in sessions.live.inbox])
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        history, live_msgs = asyncio.run(go())
    finally:
        for c in (e001, e002):
            c.disconnect()
            c.loop_stop()
    assert ("hw/v1/E001/backfill", marker) in history and ("hw/v1/E002/backfill", e002_marker) in history
    assert ("hw/v1/E001/data", live) in live_msgs
    assert [p for _, p in history + live_msgs if p == forged] == []
    assert ("hw/v1/E001/backfill", marker) in live_msgs  # the live session's copy (acknowledged undecoded)
    assert not [t for t, _ in history if not t.endswith("/backfill")]


@pytest.mark.parametrize("listener", ["external", "internal"])
def test_anonymous_and_wrong_passwords_are_refused(broker: Broker, listener: str) -> None:
    port = broker.external if listener == "external" else broker.internal
    ca = broker.ca if listener == "external" else None
    for user, password in [(None, None), ("E001", "wrong-password"), ("E001", broker.passwords["E002"])]:
        c = _client(user, password, ca=ca)
        try:
            reason = _connect(c, port)
            assert reason.is_failure, f"{user}/{password} was let in on the {listener} listener"
        finally:
            c.loop_stop()


def test_plain_tcp_is_refused_on_the_tls_listener(broker: Broker) -> None:
    # a well-formed MQTT 3.1.1 CONNECT with E001's valid credentials, sent without TLS
    user, pw = b"E001", broker.passwords["E001"].encode()
    var = b"\x00\x04MQTT\x04\xc2\x00\x1e"
    payload = b"".join(len(x).to_bytes(2, "big") + x for x in (b"plain-client", user, pw))
    body = var + payload
    packet = b"\x10" + bytes([len(body)]) + body
    with socket.create_connection(("127.0.0.1", broker.external), timeout=15) as s:
        s.sendall(packet)
        try:
            answer = s.recv(64)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith(b"\x20"), f"the TLS listener answered a plain CONNECT with a CONNACK: {answer!r}"
    # and mosquitto_pub without TLS fails too
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.external), "-u", "E001",
                        "-P", broker.passwords["E001"], "-t", "hw/v1/E001/status", "-m", "x", "-q", "1"],
                       capture_output=True, timeout=30)
    assert r.returncode != 0


def test_tls_verification_uses_the_generated_ca(broker: Broker) -> None:
    ctx = ssl.create_default_context(cafile=broker.ca)
    with socket.create_connection(("127.0.0.1", broker.external), timeout=15) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError):
        bad = ssl.create_default_context()  # the system's CAs do not know the trial CA
        with socket.create_connection(("127.0.0.1", broker.external), timeout=15) as raw:
            bad.wrap_socket(raw, server_hostname="localhost")


def test_passwd_lines_are_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    line = passwd_line("E001", "s3cret", salt=b"0123456789ab")
    name, _, rest = line.partition(":")
    assert name == "E001" and rest.startswith("$7$101$")
    # mosquitto_passwd hashes the same password with the same salt to the same digest
    pw = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "E001", "s3cret"], check=True, capture_output=True)
    theirs = pw.read_text().strip()
    import base64

    salt = base64.b64decode(theirs.split("$")[3])
    assert passwd_line("E001", "s3cret", salt=salt) == theirs


def test_regenerating_keeps_issued_passwords_and_adds_new_enterprises(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(SITE, encoding="utf-8")
    args = ["deploy", "mosquitto", "--config", str(tmp_path / "site.yaml"), "--out", str(tmp_path / "o"),
            "--hostname", "localhost"]
    assert cli(args) == 0
    first = read_credentials(tmp_path / "o" / "credentials.tsv")
    assert set(first) == {"hazardwatch", "E001", "E002"}
    assert (tmp_path / "o" / "credentials.tsv").stat().st_mode & 0o077 == 0
    more = SITE + """\
          - code: E003
            name: 三号化工
            sensors: [{tag: AT-9, kind: oxygen}]
"""
    (tmp_path / "site.yaml").write_text(more, encoding="utf-8")
    assert cli(args) == 0
    second = read_credentials(tmp_path / "o" / "credentials.tsv")
    assert {k: second[k] for k in first} == first
    assert "E003" in second and second["E003"] not in first.values()
    acl = (tmp_path / "o" / "acl").read_text()
    assert "user E003\ntopic write hw/v1/E003/#" in acl
    assert f"HAZARDWATCH_MQTT_URL=mqtt://hazardwatch:{first['hazardwatch']}@127.0.0.1:1883" in (
        tmp_path / "o" / "hazardwatch.env").read_text()


def test_queue_limits_hold_the_outage_backlog_of_the_sites_sensors() -> None:
    small = parse_site(SITE, environ={})
    q = queue_limits(small, timedelta(hours=2), timedelta(seconds=10))
    assert q.sensors == 2 and q.messages == MIN_QUEUED_MESSAGES  # 1.1 readings/s: the floor holds it
    many = "\n".join(f"              - {{tag: AT-{i}, kind: oxygen, interval: 1s}}" for i in range(20_000))
    big = parse_site(SITE.replace("            sensors: [{tag: AT-1, kind: gas_combustible, interval: 1s}]",
                                  "            sensors:\n" + many), environ={})
    q = queue_limits(big, timedelta(hours=2), timedelta(seconds=10))
    assert q.messages >= (20_000 + 0.1) * 7200  # every reading of a 2 h outage, one message each
    assert q.bytes >= q.messages * 60  # and room for their payloads
    assert plan_accounts(big)[0].name == "hazardwatch"
