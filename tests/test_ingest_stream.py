"""Ingest end to end on the real broker and database: exact rows, duplicates, rejects, crashes, outages."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from ingest.errors import RejectReason as R
from park.types import GatewayStatus, ReadingBatch
from tests.ingest_helpers import SITE, TAGS, Publisher, prepare, running_ingest, settings_for, wait_rows
from tests.test_ingest_decode import BAD

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def batch(i: int, seq: int | None = None) -> bytes:
    """Batch i: every tag of E1, one reading each, at T0 + i seconds."""
    doc: dict[str, object] = {"ts": int((T0 + timedelta(seconds=i)).timestamp() * 1000),
                              "points": [{"tag": t, "value": i + k / 100} for k, t in enumerate(TAGS)]}
    if seq is not None:
        doc["seq"] = seq
    return json.dumps(doc).encode()


def test_known_stream_with_duplicates_and_malformed_messages(mqtt_url: str, topic_prefix: str,
                                                             make_database) -> None:  # type: ignore[no-untyped-def]
    db = make_database("timescaledb", "hwi")
    settings = settings_for(mqtt_url, db, topic_prefix)
    sink: asyncio.Queue[ReadingBatch | GatewayStatus] = asyncio.Queue()

    async def go() -> None:
        await prepare(db)
        async with running_ingest(settings, sink) as svc:
            pub = Publisher(mqtt_url)
            msgs: list[tuple[str, bytes | str]] = []
            for i in range(50):
                msgs.append((f"{topic_prefix}/E1/data", batch(i, seq=i)))
                if i % 5 == 0:  # re-sent by the gateway: must not make a second row
                    msgs.append((f"{topic_prefix}/E1/data", batch(i, seq=i)))
            for i in range(30):  # single points, explicit ts, some duplicated
                p = json.dumps({"value": i, "ts": int((T0 + timedelta(minutes=5, seconds=i)).timestamp() * 1000)})
                msgs.append((f"{topic_prefix}/E2/point/LT-1", p))
                if i % 3 == 0:
                    msgs.append((f"{topic_prefix}/E2/point/LT-1", p))
            for _name, topic, payload, reason in BAD:
                if reason is R.FUTURE_TIMESTAMP:  # relative to the real receive time of this run
                    payload = {"ts": int(time.time() * 1000) + 3_600_000, "points": [{"tag": "AT-000", "value": 1}]}
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                msgs.append((topic.replace("hw/v1", topic_prefix, 1), raw))
            msgs.append((f"{topic_prefix}/E2/status", json.dumps({"online": False})))
            pub.publish_many(msgs)
            pub.close()
            expected = 50 * len(TAGS) + 30
            assert await wait_rows(db, expected) == expected
            # every bad message counted by its reason (the "other prefix" one never reaches us)
            counted = {r: svc.metrics.rejected.labels(r.value)._value.get() for r in {b[3] for b in BAD}}
            want: dict[object, int] = {}
            for name, _t, _p, reason in BAD:
                if name != "other prefix":
                    want[reason] = want.get(reason, 0) + 1
            assert {k: v for k, v in counted.items() if v} == want
            await asyncio.sleep(0.5)
        async with await psycopg.AsyncConnection.connect(db) as conn:
            cur = await conn.execute("SELECT reason, count(*) FROM rejects GROUP BY 1")
            assert dict(await cur.fetchall()) == {k.value: v for k, v in want.items()}
            cur = await conn.execute("SELECT online FROM gateway_status WHERE enterprise_code = 'E2'")
            assert await cur.fetchone() == (False,)
            cur = await conn.execute("SELECT min(ts), max(ts), sum(value) FROM readings r JOIN sensors s"
                                     " ON s.id = r.sensor_id WHERE s.tag = 'AT-003'")
            lo, hi, total = await cur.fetchone()  # type: ignore[misc]
            assert (lo, hi) == (T0, T0 + timedelta(seconds=49))
            assert total == pytest.approx(sum(i + 0.03 for i in range(50)))
        # the rule stage got every reading too, before the database
        seen = 0
        while not sink.empty():
            item = sink.get_nowait()
            if isinstance(item, ReadingBatch):
                seen += len(item)
        assert seen >= expected

    asyncio.run(go())


def _ingest_process(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "ingest", "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "ingest ready" in line:
            return proc
        if proc.poll() is not None:
            break
    raise AssertionError(f"ingest did not start: {proc.stdout.read()}")


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing(mqtt_url: str, topic_prefix: str, make_database,  # type: ignore[no-untyped-def]
                                         tmp_path: Path) -> None:
    db = make_database("timescaledb", "hwi")
    config = tmp_path / "site.yaml"
    config.write_text(SITE, encoding="utf-8")
    env = dict(os.environ, HAZARDWATCH_DATABASE_URL=db, HAZARDWATCH_MQTT_URL=mqtt_url,
               HAZARDWATCH_MQTT_PREFIX=topic_prefix, HAZARDWATCH_MQTT_CLIENT_ID=f"kill9-{topic_prefix[:9]}")
    proc = _ingest_process(config, env)
    procs = [proc]
    n = 3000
    pub = Publisher(mqtt_url)
    try:
        # publish in the background while we kill the consumer mid-stream
        infos = []
        for i in range(n):
            infos.append(pub.client.publish(f"{topic_prefix}/E1/data", batch(i), qos=1))
            if i == n // 3:
                time.sleep(0.3)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        for info in infos:
            info.wait_for_publish(60)
        async def count() -> int:
            async with await psycopg.AsyncConnection.connect(db) as conn:
                cur = await conn.execute("SELECT count(*) FROM readings")
                return (await cur.fetchone())[0]  # type: ignore[index, no-any-return]
        stored_before = asyncio.run(count())
        assert 0 < stored_before < n * len(TAGS), "the kill should land mid-stream"
        proc = _ingest_process(config, env)
        procs.append(proc)
        assert asyncio.run(wait_rows(db, n * len(TAGS), within=120)) == n * len(TAGS)
    finally:
        pub.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        for p in procs:
            if p.stdout is not None:
                p.stdout.close()
