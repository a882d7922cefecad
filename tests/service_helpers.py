"""Running the whole service in-process on a fake clock, against the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from hazardwatch.api.auth import create_token
from hazardwatch.service import ServiceHandle, run_service
from park.clock import FakeClock
from park.settings import EnvSettings, Settings, load_settings
from park.site import Site
from park.sitefile import parse_site
from tests.alerting_helpers import VendorServer, sms_gateway, sms_id, wecom_robot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_settings(site: Site, db_url: str, mqtt_url: str, prefix: str, data_dir: str, *, client: str = "svc",
                     http_addr: str | None = None, **env: str) -> Settings:
    """The settings the in-process service tests run with: a broker session, an API port and a data
    directory of their own; ``env`` adds further ``EnvSettings`` fields (instance, lease_ttl …)."""
    return load_settings(site, EnvSettings(
        database_url=db_url, mqtt_url=mqtt_url, mqtt_prefix=prefix, mqtt_client_id=f"{client}-{uuid.uuid4().hex[:8]}",
        http_addr=http_addr or f"127.0.0.1:{free_port()}", link_secret="test-link-secret-0123456789",
        data_dir=data_dir, **env))


@contextlib.asynccontextmanager
async def launched(start: Callable[[Callable[[ServiceHandle], None]], Coroutine[Any, Any, None]],
                   within: float = 30) -> AsyncIterator[tuple[ServiceHandle, asyncio.Task[None]]]:
    """``start(on_ready)`` — a ``run_service(…)`` call — as a task, once every stage is up; cancelled after.
    The caller builds the call, so it decides what the service is handed (and what it keeps itself)."""
    ready: asyncio.Future[ServiceHandle] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(start(ready.set_result), name="service")
    try:
        done, _ = await asyncio.wait({ready, task}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        yield ready.result(), task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running_service(site: Site, db_url: str, mqtt_url: str, prefix: str,
                          clock: FakeClock) -> AsyncIterator[tuple[ServiceHandle, httpx.AsyncClient]]:
    data_dir = tempfile.mkdtemp(prefix="hw-data-")
    # One instance, whose stages the test holds (the handle of the first term): the lease is the HA
    # tests' subject. With the default 10 s, a renewal once came later than the ~4.7 s it may (on a
    # loaded CI machine, most likely as Chromium started); the instance stepped down, led again with
    # new stages, and the test looked at the old ones.
    settings = service_settings(site, db_url, mqtt_url, prefix, data_dir, lease_ttl="60s")
    try:
        async with launched(lambda on_ready: run_service(settings, site, clock=clock, registry=CollectorRegistry(),
                                                         on_ready=on_ready)) as (handle, _task), \
                httpx.AsyncClient(base_url=handle.http_url, timeout=10) as client:
            for _ in range(100):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            yield handle, client
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def token_for(handle: ServiceHandle, unit: str) -> dict[str, str]:
    async with handle.pool.connection() as conn, conn.transaction():
        tok = await create_token(conn, handle.park, unit, f"test-{unit}")
    return {"Authorization": f"Bearer {tok}"}


def site_text(sms_url: str, wecom_url: str) -> str:
    return f"""\
site: {{name: 端到端测试园区}}
channels:
  sms: {{provider: http, url: "{sms_url}/send"}}
  wecom: {{base_url: "{wecom_url}"}}
districts:
  - code: D1
    name: 一区
    contacts: [{{name: 区值班, phone: "13800000001", channels: [sms]}}]
    towns:
      - code: T1
        name: 一镇
        contacts: [{{name: 镇值班, phone: "13800000002", channels: [sms]}}]
        enterprises:
          - code: E1
            name: 一号化工
            contacts: [{{name: 张工, phone: "13800000003", channels: [sms]}}]
            wecom_robot: {{key: "robot-e1"}}
            sensors:
              - {{tag: AT-1, kind: gas_combustible, name: 罐区可燃气体}}
              - {{tag: AT-2, kind: gas_toxic, gas: Cl2, name: 液氯间氯气}}
          - code: E2
            name: 二号化工
            sensors:
              - {{tag: X, kind: gas_combustible}}
"""


@dataclass
class StandIns:
    sms: VendorServer
    robot: VendorServer
    text: str

    @property
    def site(self) -> Site:
        return parse_site(self.text, environ={})


@pytest.fixture
def stand_ins() -> Iterator[StandIns]:
    """A local SMS gateway and WeCom robot endpoint, and the site file that points at them."""
    sms, robot = VendorServer(sms_gateway, dedupe=sms_id), VendorServer(wecom_robot)
    try:
        yield StandIns(sms, robot, site_text(sms.url, robot.url))
    finally:
        sms.close()
        robot.close()


class ServiceProcess:
    """``hazardwatch run`` as a real process; everything it prints is kept in ``log``."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "a", encoding="utf-8")
        self.proc = subprocess.Popen([str(Path(sys.executable).with_name("hazardwatch")), "run", "--config",
                                      str(config)], env=env, stdout=self._out, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: "hazardwatch running" in self.text() or self.proc.poll() is not None, within=60)
        if self.proc.poll() is not None:
            raise AssertionError(f"the service did not start:\n{self.text()[-3000:]}")

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


def wait_for(cond: Callable[[], object], within: float = 30.0, what: str = "condition") -> float:
    """Poll ``cond`` until true (a generous deadline, never a fixed sleep); returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {within} s")


def service_env(db_url: str, mqtt_url: str, prefix: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, HAZARDWATCH_DATABASE_URL=db_url, HAZARDWATCH_MQTT_URL=mqtt_url,
                HAZARDWATCH_DATA_DIR=str(data_dir), HAZARDWATCH_MQTT_PREFIX=prefix,
                HAZARDWATCH_HTTP_ADDR=f"127.0.0.1:{free_port()}",
                HAZARDWATCH_MQTT_CLIENT_ID=f"svc-{uuid.uuid4().hex[:8]}", PYTHONUNBUFFERED="1", **extra)
