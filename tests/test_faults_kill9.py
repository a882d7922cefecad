"""``kill -9`` of the whole service (``hazardwatch run``) in the middle of a burst of readings: real
broker, QoS 1, the service's persistent session. After the restart every reading is stored exactly
once — nothing lost with the process, nothing doubled by the broker's redelivery.

So that the kill lands while the service holds readings it has received but not yet stored (the
moment an early acknowledgement would lose them), its database is reached through a proxy that is
cut just before the kill: the test waits until the service reports such readings held, then kills."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.db_proxy import DbProxy, db_proxy
from tests.ingest_helpers import Publisher
from tests.service_helpers import ServiceProcess, service_env, wait_for
from tests.test_alerting_outage import SITE

AFTER_KILL = 1000  # messages published while the service is dead: the broker keeps them for its session


def taken_in(env: dict[str, str]) -> float:
    """Messages the service has taken in from the broker (its own metric); 0 while it does not answer."""
    try:
        text = httpx.get(f"http://{env['HAZARDWATCH_HTTP_ADDR']}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("hazardwatch_ingest_messages_total "):
            return float(line.split()[1])
    return 0.0


def stored(db: str) -> list[tuple[datetime, float]]:
    with psycopg.connect(db, autocommit=True) as conn:
        return conn.execute("SELECT ts, value FROM readings ORDER BY ts").fetchall()  # type: ignore[return-value]


@pytest.mark.slow
def test_kill_9_mid_burst_every_reading_stored_exactly_once(  # type: ignore[no-untyped-def]
        make_database, mqtt_url: str, topic_prefix: str, tmp_path: Path) -> None:
    db = make_database("postgres", "hwf2kill")
    with db_proxy(db) as proxy:
        run(db, proxy, mqtt_url, topic_prefix, tmp_path)


def run(db: str, proxy: DbProxy, mqtt_url: str, topic_prefix: str, tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(SITE.format(sms="http://127.0.0.1:9"), encoding="utf-8")
    # one client id for both runs: one persistent session at the broker
    env = service_env(proxy.url(), mqtt_url, topic_prefix, tmp_path / "data")
    # a day back, one reading a second: however long the burst runs on a slow machine, its newest reading
    # stays in the past (the door refuses more than 5 minutes ahead) and inside the 7-day backfill bound
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    sent: list[int] = []
    killed = threading.Event()
    errors: list[BaseException] = []
    pub = Publisher(mqtt_url)

    def burst() -> None:
        """Publish readings one second apart in gateway time, without pause, until AFTER_KILL past the kill."""
        try:
            infos, i, left = [], 0, None
            while left is None or left > 0:
                body = {"ts": int((t0 + timedelta(seconds=i)).timestamp() * 1000),
                        "points": [{"tag": "AT-1", "value": float(i % 20)}]}
                infos.append(pub.client.publish(f"{topic_prefix}/E1/data", json.dumps(body), qos=1))
                sent.append(i)
                i += 1
                if left is None and killed.is_set():
                    left = AFTER_KILL
                elif left is not None:
                    left -= 1
            for info in infos:
                info.wait_for_publish(60)
        except BaseException as e:  # reported by the test
            errors.append(e)

    svc = ServiceProcess(config, env, tmp_path / "service-1.log")
    publisher = threading.Thread(target=burst, name="burst")
    try:
        publisher.start()
        wait_for(lambda: len(stored(db)) > 0, within=60, what="the first readings stored")
        # writes stall: the service goes on receiving, and holds what it could not store yet
        proxy.down()
        wait_for(lambda: taken_in(env) >= len(stored(db)) + 50, within=120,
                 what="readings taken in and held, not stored")
        svc.kill()
        killed.set()
        proxy.up()
        publisher.join(120)
        assert not publisher.is_alive() and not errors, errors
        before = len(stored(db))
        total = len(sent)
        assert 0 < before < total, f"the kill landed mid-burst: {before} of {total} stored"
        svc = ServiceProcess(config, env, tmp_path / "service-2.log")
        try:
            wait_for(lambda: len(stored(db)) >= total, within=180, what=f"all {total} readings stored")
        except AssertionError:
            raise AssertionError(f"{len(stored(db))} of {total} readings stored") from None
        rows = stored(db)
        assert [ts for ts, _ in rows] == [t0 + timedelta(seconds=i) for i in sent], "each reading once, none lost"
        assert [v for _, v in rows] == [float(i % 20) for i in sent]
        assert svc.alive(), svc.text()[-3000:]
    finally:
        killed.set()
        proxy.up()
        publisher.join(120)
        pub.close()
        svc.stop()
