"""Helpers for ingest tests: a small park, a publisher, and the ingest stage run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
from prometheus_client import CollectorRegistry

from ingest.service import WRITERS, IngestService
from park.db import migrate, open_pool
from park.db.registry import sync_registry
from park.health import Health
from park.model import Park
from park.settings import EnvSettings, Settings, load_settings
from park.site import Site
from park.sitefile import parse_site

TAGS = [f"AT-{i:03d}" for i in range(20)]

SITE = """\
site: {name: 测试园区}
channels: {sms: {provider: http, url: "http://127.0.0.1:9/send"}}
districts:
  - code: D1
    name: 一区
    towns:
      - code: T1
        name: 一镇
        enterprises:
          - code: E1
            name: 一号化工
            contacts: [{name: 安全员, phone: "13900000001", channels: [sms]}]
            sensors:
""" + "".join(f"              - {{tag: {t}, kind: gas_combustible}}\n" for t in TAGS) + """\
          - code: E2
            name: 二号化工
            sensors:
              - {tag: LT-1, kind: tank_level, limits: {hh: 9, h: 8}}
"""


def site() -> Site:
    return parse_site(SITE, environ={})


def settings_for(mqtt_url: str, db_url: str, prefix: str, client_id: str | None = None, **env: str) -> Settings:
    return load_settings(None, EnvSettings(
        database_url=db_url, mqtt_url=mqtt_url, mqtt_prefix=prefix,
        mqtt_client_id=client_id or f"hw-test-{uuid.uuid4().hex[:8]}", http_addr="127.0.0.1:0", **env,
    ))


async def prepare(db_url: str) -> Park:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await migrate(conn)
        return await sync_registry(conn, site())


@contextlib.asynccontextmanager
async def running_ingest(settings: Settings, sink: asyncio.Queue | None = None,  # type: ignore[type-arg]
                         *, health: Health | None = None, writers: int = WRITERS, wait: bool = True,
                         ) -> AsyncIterator[IngestService]:
    assert settings.database_url is not None
    async with open_pool(settings.database_url.get_secret_value(), min_size=1, max_size=writers + 2) as pool:
        async with pool.connection() as conn:
            park = await sync_registry(conn, site())
        svc = IngestService(settings=settings, park=park, pool=pool, sink=sink, registry=CollectorRegistry(),
                            health=health, writers=writers)
        task = asyncio.create_task(svc.run(), name="ingest-under-test")
        try:
            if wait:
                await asyncio.wait_for(svc.subscribed.wait(), 20)
            yield svc
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Publisher:
    """A real paho publisher at QoS 1 (what gateways do)."""

    def __init__(self, mqtt_url: str, *, ca_file: str | None = None, username: str | None = None,
                 password: str | None = None, persistent: bool = False, cert_file: str | None = None,
                 key_file: str | None = None) -> None:
        u = urlsplit(mqtt_url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                                  clean_session=not persistent)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)  # while the broker is away, keep everything and resend
        self.client.reconnect_delay_set(0.1, 1)
        if ca_file:
            self.client.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
        if username:
            self.client.username_pw_set(username, password)
        self.client.connect(u.hostname or "127.0.0.1", u.port or (8883 if ca_file else 1883))
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def publish_many(self, msgs: Iterable[tuple[str, bytes | str]]) -> None:
        infos = [self.client.publish(t, p, qos=1) for t, p in msgs]
        for i in infos:
            i.wait_for_publish(30)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def wait_rows(db_url: str, n: int, within: float = 30.0) -> int:
    deadline = time.monotonic() + within
    got = -1
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute("SELECT count(*) FROM readings")
            got = (await cur.fetchone())[0]  # type: ignore[index]
            if got >= n:
                await asyncio.sleep(0.3)  # and nothing more arrives
                cur = await conn.execute("SELECT count(*) FROM readings")
                return (await cur.fetchone())[0]  # type: ignore[index, no-any-return]
            await asyncio.sleep(0.1)
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    """A Mosquitto of the test's own, running the configuration hazardwatch ships (queue limits,
    persistence) on a free port, with ``listener`` lines of the test's choosing; it can be stopped
    and started again on the same port with its persisted sessions."""

    def __init__(self, folder: Path, listener: str = "", extra: str = "") -> None:
        self.dir = folder
        self.port = free_port()
        (folder / "data").mkdir(parents=True, exist_ok=True)
        shipped = (Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "hazardwatch.conf").read_text()
        listener = listener or f"listener {self.port} 127.0.0.1"
        conf = re.sub(r"(?m)^listener 1883 127.0.0.1$", listener.replace("{port}", str(self.port)), shipped)
        conf = re.sub(r"(?m)^persistence_location .*$", f"persistence_location {folder / 'data'}/", conf)
        if "allow_anonymous false" in extra:
            conf = re.sub(r"(?m)^allow_anonymous true$", "", conf)
        conf += f"\n# test additions\nuser root\n{extra}\n"
        (folder / "mosquitto.conf").write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.dir / "log", "ab") as log:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.dir / "mosquitto.conf")],
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {(self.dir / 'log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("mosquitto did not listen")

    def stop(self) -> None:
        """A clean shutdown: the broker saves its sessions and queues first."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


async def until(cond: Callable[[], bool], within: float = 30.0, what: str = "condition") -> None:
    """Poll ``cond`` until it holds; fail after ``within`` seconds (a generous deadline, not a timing)."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within:.0f} s")
        await asyncio.sleep(0.02)
