"""``python -m ingest --config SITE.yaml``: the ingest stage alone (benchmarks, crash tests)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from prometheus_client import CollectorRegistry

from ingest.service import IngestService
from park.db import migrate, open_pool
from park.db.registry import sync_registry
from park.errors import HazardwatchError
from park.proc import trim_memory
from park.settings import load_settings
from park.sitefile import load_site


async def main(config: str) -> None:
    site = load_site(config)
    settings = load_settings(site)
    if settings.database_url is None:
        raise HazardwatchError("set HAZARDWATCH_DATABASE_URL")
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with open_pool(settings.database_url.get_secret_value(), min_size=1, max_size=4) as pool:
        async with pool.connection() as conn:
            await migrate(conn)
            park = await sync_registry(conn, site)
        del site
        trim_memory()
        service = IngestService(settings=settings, park=park, pool=pool, sink=None, registry=CollectorRegistry())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(service.run(), name="ingest")
            await service.subscribed.wait()
            print("ingest ready", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m ingest", description="run the ingest stage alone")
    ap.add_argument("--config", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(main(args.config))
    except KeyboardInterrupt:
        pass
    except HazardwatchError as e:
        print(f"✗ {e}", file=sys.stderr)
        sys.exit(1)
