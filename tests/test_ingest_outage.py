"""PostgreSQL stopped for 30 s mid-stream: nothing lost, nothing doubled, no restart, rules still fed."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ingest.service import DB_STAGE
from park.health import Health
from park.types import GatewayStatus, ReadingBatch
from tests.ingest_helpers import TAGS, Publisher, prepare, running_ingest, settings_for, wait_rows
from tests.test_ingest_stream import batch


def _newest_pgbin() -> Path:
    """Debian's PostgreSQL server binaries, newest major version (HW_TEST_PGBIN overrides)."""
    if os.environ.get("HW_TEST_PGBIN"):
        return Path(os.environ["HW_TEST_PGBIN"])
    majors = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()),
                    key=lambda p: int(p.parent.name))
    return majors[-1] if majors else Path("/usr/lib/postgresql/15/bin")


PGBIN = _newest_pgbin()


class PrivatePostgres:
    """A real PostgreSQL cluster of this test's own, so stopping it disturbs nobody else."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hw-pg-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        shutil.chown(self.dir, "postgres")
        self._run(str(PGBIN / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust")

    def _run(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._run(str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-w", "-l", str(self.dir / "log"),
                  "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}", "start")

    def stop(self) -> None:
        self._run(str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"),
                        "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    if not (PGBIN / "initdb").exists():
        pytest.fail(f"PostgreSQL server binaries not found in {PGBIN} (set HW_TEST_PGBIN)")
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()


@pytest.mark.slow
def test_database_down_30s_mid_stream(mqtt_url: str, topic_prefix: str, private_pg: PrivatePostgres) -> None:
    settings = settings_for(mqtt_url, private_pg.url, topic_prefix)
    sink: asyncio.Queue[ReadingBatch | GatewayStatus] = asyncio.Queue()
    n1, n2, n3 = 200, 300, 200

    async def go() -> None:
        await prepare(private_pg.url)
        health = Health()
        async with running_ingest(settings, sink, health=health) as svc:
            pub = Publisher(mqtt_url)
            pub.publish_many((f"{topic_prefix}/E1/data", batch(i)) for i in range(n1))
            assert await wait_rows(private_pg.url, n1 * len(TAGS)) == n1 * len(TAGS)
            await asyncio.to_thread(private_pg.stop)
            down_at = time.monotonic()
            while not sink.empty():
                sink.get_nowait()
            second = [(f"{topic_prefix}/E1/data", batch(i)) for i in range(n1, n1 + n2)]
            await asyncio.to_thread(pub.publish_many, second)
            # alarms must not wait for the database: the readings reach the rule stage during the outage
            seen = 0
            deadline = time.monotonic() + 10
            while seen == 0 and time.monotonic() < deadline:
                try:
                    item = await asyncio.wait_for(sink.get(), 1)
                except TimeoutError:
                    continue
                if isinstance(item, ReadingBatch):
                    seen += len(item)
            assert seen > 0, "no readings reached the rules sink while the database was down"
            await asyncio.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
            assert svc.metrics.db_errors._value.get() > 0
            assert not health.stages[DB_STAGE].ok  # /readyz says why
            await asyncio.to_thread(private_pg.start)
            await asyncio.to_thread(pub.publish_many, ((f"{topic_prefix}/E1/data", batch(i))
                                                       for i in range(n1 + n2, n1 + n2 + n3)))
            # a few of the first batch re-sent too: still one row each
            await asyncio.to_thread(pub.publish_many, ((f"{topic_prefix}/E1/data", batch(i)) for i in range(5)))
            total = (n1 + n2 + n3) * len(TAGS)
            assert await wait_rows(private_pg.url, total, within=90) == total
            assert health.stages[DB_STAGE].ok  # recovered by itself
            pub.close()
        async with await psycopg.AsyncConnection.connect(private_pg.url) as conn:
            cur = await conn.execute("SELECT count(*), count(DISTINCT (sensor_id, ts)) FROM readings")
            assert await cur.fetchone() == (total, total)

    asyncio.run(go())
