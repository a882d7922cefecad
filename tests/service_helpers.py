"""Running the whole service in-process on a fake clock, against the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
from prometheus_client import CollectorRegistry

from hazardwatch.api.auth import create_token
from hazardwatch.service import ServiceHandle, run_service
from park.clock import FakeClock
from park.settings import EnvSettings, load_settings
from park.site import Site


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def running_service(site: Site, db_url: str, mqtt_url: str, prefix: str,
                          clock: FakeClock) -> AsyncIterator[tuple[ServiceHandle, httpx.AsyncClient]]:
    port = free_port()
    settings = load_settings(site, EnvSettings(
        database_url=db_url, mqtt_url=mqtt_url, mqtt_prefix=prefix, mqtt_client_id=f"svc-{uuid.uuid4().hex[:8]}",
        http_addr=f"127.0.0.1:{port}", link_secret="test-link-secret-0123456789"))
    ready: asyncio.Future[ServiceHandle] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_service(settings, site, clock=clock, registry=CollectorRegistry(),
                                           on_ready=ready.set_result))
    try:
        done, _ = await asyncio.wait({ready, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        handle = ready.result()
        async with httpx.AsyncClient(base_url=handle.http_url, timeout=10) as client:
            for _ in range(100):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            yield handle, client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def token_for(handle: ServiceHandle, unit: str) -> dict[str, str]:
    async with handle.pool.connection() as conn, conn.transaction():
        tok = await create_token(conn, handle.park, unit, f"test-{unit}")
    return {"Authorization": f"Bearer {tok}"}
