"""Helpers for ingest tests: a small park, a publisher, and the ingest stage run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
from prometheus_client import CollectorRegistry

from ingest.service import IngestService
from park.db import migrate, open_pool
from park.db.registry import sync_registry
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


def settings_for(mqtt_url: str, db_url: str, prefix: str, client_id: str | None = None) -> Settings:
    return load_settings(None, EnvSettings(
        database_url=db_url, mqtt_url=mqtt_url, mqtt_prefix=prefix,
        mqtt_client_id=client_id or f"hw-test-{uuid.uuid4().hex[:8]}", http_addr="127.0.0.1:0",
    ))


async def prepare(db_url: str) -> Park:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await migrate(conn)
        return await sync_registry(conn, site())


@contextlib.asynccontextmanager
async def running_ingest(settings: Settings, sink: asyncio.Queue | None = None,  # type: ignore[type-arg]
                         ) -> AsyncIterator[IngestService]:
    assert settings.database_url is not None
    async with open_pool(settings.database_url.get_secret_value(), min_size=1, max_size=4) as pool:
        async with pool.connection() as conn:
            park = await sync_registry(conn, site())
        svc = IngestService(settings=settings, park=park, pool=pool, sink=sink, registry=CollectorRegistry())
        task = asyncio.create_task(svc.run(), name="ingest-under-test")
        try:
            await asyncio.wait_for(svc.subscribed.wait(), 10)
            yield svc
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Publisher:
    """A real paho publisher at QoS 1 (what gateways do)."""

    def __init__(self, mqtt_url: str) -> None:
        u = urlsplit(mqtt_url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(200)
        self.client.connect(u.hostname or "127.0.0.1", u.port or 1883)
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
