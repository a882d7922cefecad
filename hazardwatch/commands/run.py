"""``hazardwatch run --config SITE.yaml``: the whole service in one process."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from park.durations import parse_duration
from park.errors import HazardwatchError, SiteFileError
from park.proc import pause_collector, settle
from park.settings import load_settings
from park.sitefile import load_site

GC_PAUSE_MAX = 600.0  # seconds the collector may stay paused at start-up, at the most


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the whole service (ingest, rules, alerting, HTTP API and board)")
    p.add_argument("--config", required=True, help="site file (YAML)")
    p.add_argument("--start-timeout", default="60s",
                   help="how long to wait at start for the database and the broker before giving up "
                        "(default 60s); once running, outages are waited out for ever")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pause_collector()  # until the service runs (settle, below): start-up with a large registry
    try:
        site = load_site(args.config)
        settings = load_settings(site)
    except SiteFileError as e:
        print(f"✗ {e}", file=sys.stderr)
        print("  the service does not start half-configured; fix the file and start again", file=sys.stderr)
        return 1
    except HazardwatchError as e:
        print(f"✗ {e}", file=sys.stderr)
        return 1
    try:
        limit = parse_duration(args.start_timeout).total_seconds()
    except ValueError as e:
        print(f"✗ --start-timeout: {e}", file=sys.stderr)
        return 1
    from hazardwatch.memtrim import tune_allocator
    from hazardwatch.preflight import preflight
    from hazardwatch.service import run_service

    tune_allocator()  # before any thread: a burst's buffers go back to the system once freed (memtrim)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # the parsed site file is handed to the service, not kept here: the service frees its per-sensor
    # models once compiled (half the resident memory with the national registry), if no one else holds them
    handed = [site]
    del site

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await preflight(settings, limit, say)
        # the collector resumes once the service runs, or after a while whatever happens
        asyncio.get_running_loop().call_later(GC_PAUSE_MAX, settle)
        await run_service(settings, handed.pop(), on_ready=lambda _h: settle())

    return run_until_stopped(main())


def run_until_stopped(coro: Coroutine[Any, Any, None]) -> int:
    """Run the service; a known error (even from inside the TaskGroup) is one clear line, exit 1."""
    try:
        asyncio.run(coro)
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except BaseException as e:
        known = first_known(e)
        if known is None:
            raise
        print(f"✗ {known}", file=sys.stderr)
        return 1
    print("hazardwatch stopped", file=sys.stderr)
    return 0


def first_known(e: BaseException) -> HazardwatchError | None:
    if isinstance(e, HazardwatchError):
        return e
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            if (found := first_known(sub)) is not None:
                return found
    return None
