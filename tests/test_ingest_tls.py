"""The broker over TLS, for real: a private Mosquitto with a CA and a server certificate made here,
a password full of URL-reserved characters, an optional client certificate — and a broker that
stalls or refuses never freezes the event loop nor gets hammered."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trustme
from prometheus_client import CollectorRegistry

from ingest.metrics import IngestMetrics
from ingest.transport import STAGE, MqttTransport
from park.health import Health
from park.settings import EnvSettings, MqttTarget, load_settings
from park.sitefile import parse_site
from tests.ingest_helpers import (
    SITE,
    TAGS,
    PrivateBroker,
    Publisher,
    prepare,
    running_ingest,
    settings_for,
    until,
    wait_rows,
)

USER = "gw-01"
PASSWORD = "p#ss/w@rd:x?y%"  # every character a URL reserves, as an operator would type it
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


class TlsBroker:
    def __init__(self, folder: Path, *, require_cert: bool) -> None:
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
        server.private_key_pem.write_to_path(str(folder / "server.key"))
        client = self.ca.issue_cert("gateway-client")
        self.client_cert, self.client_key = folder / "client.pem", folder / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(folder / "passwd"), USER, PASSWORD], check=True,
                       capture_output=True)
        listener = (f"listener {{port}} 127.0.0.1\ncafile {self.ca_file}\ncertfile {folder / 'server.pem'}\n"
                    f"keyfile {folder / 'server.key'}\nrequire_certificate {'true' if require_cert else 'false'}")
        self.broker = PrivateBroker(folder, listener, f"allow_anonymous false\npassword_file {folder / 'passwd'}")
        self.port = self.broker.port

    def url(self, password: str = PASSWORD) -> str:
        return f"mqtts://{USER}:{password}@127.0.0.1:{self.port}"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    b = TlsBroker(tmp_path, require_cert=False)
    b.broker.start()
    try:
        yield b
    finally:
        b.broker.stop()


def _burst(prefix: str) -> list[tuple[str, bytes | str]]:
    msgs: list[tuple[str, bytes | str]] = []
    for i in range(100):
        ts = int((T0 + timedelta(seconds=i)).timestamp() * 1000)
        msgs.append((f"{prefix}/E1/data", json.dumps({"ts": ts, "points": [{"tag": t, "value": i} for t in TAGS]})))
    for i in range(1500):  # many small packets: several share each TLS record
        ts = int((T0 + timedelta(minutes=5, milliseconds=i * 10)).timestamp() * 1000)
        msgs.append((f"{prefix}/E2/point/LT-1", json.dumps({"value": i % 7, "ts": ts})))
    return msgs


def test_tls_with_reserved_characters_in_the_password(tls_broker: TlsBroker, topic_prefix: str, make_database,  # type: ignore[no-untyped-def]
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The password is written raw in the URL; every message of a burst over TLS is stored, none waits
    in TLS's buffer (a burst ends inside a TLS record), and the password is never logged."""
    caplog.set_level(logging.DEBUG)
    db = make_database("postgres", "hwi")
    settings = settings_for(tls_broker.url(), db, topic_prefix, mqtt_ca_file=str(tls_broker.ca_file))
    assert settings.mqtt.password is not None and settings.mqtt.password.get_secret_value() == PASSWORD
    expected = 100 * len(TAGS) + 1500

    async def go() -> None:
        await prepare(db)
        health = Health()
        async with running_ingest(settings, health=health):
            assert health.stages[STAGE].ok
            pub = Publisher(f"mqtt://127.0.0.1:{tls_broker.port}", ca_file=str(tls_broker.ca_file), username=USER,
                            password=PASSWORD)
            try:
                await asyncio.to_thread(pub.publish_many, _burst(topic_prefix))
                # well inside the keepalive (30 s): bytes stranded in TLS's buffer would wait for it
                assert await wait_rows(db, expected, within=20) == expected
            finally:
                pub.close()

    asyncio.run(go())
    shown = caplog.text + repr(settings) + str(settings.safe_dict())
    assert PASSWORD not in shown and "p%23ss" not in shown


def test_client_certificate_and_credentials_from_the_site_file(tmp_path: Path, topic_prefix: str,  # type: ignore[no-untyped-def]
                                                               make_database) -> None:
    b = TlsBroker(tmp_path, require_cert=True)
    b.broker.start()
    db = make_database("postgres", "hwi")
    site = parse_site(SITE + f'mqtt: {{url: "mqtts://127.0.0.1:{b.port}", username: {USER}, '
                             f'password: "{PASSWORD}"}}\n', environ={})
    env = dict(database_url=db, mqtt_prefix=topic_prefix, mqtt_client_id=f"tls-{topic_prefix[:9]}",
               http_addr="127.0.0.1:0", mqtt_ca_file=str(b.ca_file))
    without_cert = load_settings(site, EnvSettings(**env))  # type: ignore[arg-type]
    with_cert = load_settings(site, EnvSettings(**env, mqtt_cert_file=str(b.client_cert),  # type: ignore[arg-type]
                                                mqtt_key_file=str(b.client_key)))

    async def go() -> None:
        await prepare(db)
        health = Health()
        # the broker asks for a client certificate: without one, no session (and a reason on /readyz)
        async with running_ingest(without_cert, health=health, wait=False) as svc:
            await until(lambda: svc.transport.attempts >= 2, what="two attempts")
            assert not svc.connected and not health.stages[STAGE].ok
            assert PASSWORD not in str(health.report())
        async with running_ingest(with_cert, health=health) as svc:
            assert svc.connected and health.stages[STAGE].ok
            pub = Publisher(f"mqtt://127.0.0.1:{b.port}", ca_file=str(b.ca_file), username=USER, password=PASSWORD,
                            cert_file=str(b.client_cert), key_file=str(b.client_key))
            try:
                await asyncio.to_thread(pub.publish_many, _burst(topic_prefix)[:50])
                assert await wait_rows(db, 50 * len(TAGS)) == 50 * len(TAGS)
            finally:
                pub.close()

    try:
        asyncio.run(go())
    finally:
        b.broker.stop()


def _transport(target: MqttTarget, **kw: object) -> MqttTransport:
    return MqttTransport(target, "hw-tls-test", "hwingest/#", metrics=IngestMetrics(CollectorRegistry()), **kw)  # type: ignore[arg-type]


def test_refused_connack_keeps_backing_off(tls_broker: TlsBroker) -> None:
    """A broker that accepts TCP and TLS and then refuses the CONNACK (wrong password) is retried
    with a growing wait; the count is not reset by the TCP connection succeeding."""
    waits: list[float] = []

    async def no_wait(delay: float) -> None:  # the fake clock of back-off: note the wait, do not sleep
        waits.append(delay)
        await asyncio.sleep(0)

    async def go() -> None:
        health = Health()
        t = _transport(MqttTarget.parse(tls_broker.url("wrong-password"), ca_file=str(tls_broker.ca_file)),
                       health=health, sleep=no_wait)
        task = asyncio.create_task(t.run())
        try:
            await until(lambda: t.attempts >= 7 or task.done(), what="seven attempts")
            assert not t.connected and t.session == 0
            assert "refused" in (health.stages[STAGE].reason or "")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(go())
    assert len(waits) >= 6, waits
    first = waits[:6]  # below the cap (30 s), where jitter could make two capped waits go down
    assert all(b >= a for a, b in itertools.pairwise(first)), waits
    assert first[5] >= 8 * first[0], waits


def test_a_stalled_handshake_does_not_freeze_the_event_loop(tmp_path: Path) -> None:
    """A listener that accepts the TCP connection and never answers the TLS ClientHello: the
    handshake waits in a worker thread while the event loop keeps serving everything else."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]

        async def go() -> None:
            t = _transport(MqttTarget.parse(f"mqtts://127.0.0.1:{port}", ca_file=str(ca_file)))
            task = asyncio.create_task(t.run())
            try:
                for _ in range(500):
                    if t.connecting:
                        break
                    await asyncio.sleep(0.01)
                assert t.connecting
                turns = 0
                for _ in range(20):  # the loop keeps turning while the handshake hangs
                    await asyncio.sleep(0.01)
                    turns += 1
                    assert t.connecting, "the handshake ended early: it should hang for its timeout"
                assert turns == 20 and t.attempts == 1
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        asyncio.run(go())


class CoalescingTlsProxy:
    """A TLS terminator in front of a plain broker (as HAProxy or a cloud load balancer would be) that
    forwards what the broker sends in large writes: many MQTT packets share one TLS record, so after
    the client reads one packet the rest sit decrypted in its TLS buffer (``pending()``), where no
    selector sees them."""

    def __init__(self, folder: Path, upstream: tuple[str, int]) -> None:
        ca = trustme.CA()
        self.ca_file = folder / "proxy-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self.ctx)
        self.upstream = upstream
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, hold: bool) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while True:
                if hold:  # let the broker's packets pile up, then pass them on in one write
                    await asyncio.sleep(0.005)
                data = await r.read(65536)
                if not data:
                    break
                w.write(data)
                await w.drain()
        w.close()

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(self._pump(cr, bw, False), self._pump(br, cw, True))

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", 0, ssl=self.ctx)
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        async with server:
            await self._stop.wait()

    def __enter__(self) -> CoalescingTlsProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_tls_records_holding_many_packets_are_read_to_the_end(mqtt_url: str, topic_prefix: str,  # type: ignore[no-untyped-def]
                                                               make_database, tmp_path: Path) -> None:
    """Every message of a burst is stored well inside the keepalive: the last TLS record's packets do
    not wait for the next byte from the broker (which, with nothing more published, is a PINGRESP
    30 s later)."""
    db = make_database("postgres", "hwi")
    u = urlsplit(mqtt_url)
    with CoalescingTlsProxy(tmp_path, (u.hostname or "127.0.0.1", u.port or 1883)) as proxy:
        settings = settings_for(f"mqtts://127.0.0.1:{proxy.port}", db, topic_prefix, mqtt_ca_file=str(proxy.ca_file))
        expected = 100 * len(TAGS) + 1500

        async def go() -> None:
            await prepare(db)
            async with running_ingest(settings):
                pub = Publisher(mqtt_url)
                try:
                    for round_ in range(3):  # bursts with pauses between: each one must be read to its end
                        msgs = _burst(topic_prefix)
                        await asyncio.to_thread(pub.publish_many, msgs[round_::3])
                    assert await wait_rows(db, expected, within=20) == expected
                finally:
                    pub.close()

        asyncio.run(go())
