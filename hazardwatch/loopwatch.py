"""The event loop's own health: how late it runs, and what held it when it stalled.

Everything in hazardwatch shares one asyncio loop; a callback that holds it for seconds delays
every alarm, lets the leadership lease lapse (it is renewed from the loop) and stalls ingest. A
small task stamps the time every ``TICK`` seconds; a watcher thread, outside the loop, sees when the
stamp is older than ``STALL`` and logs — once per stall — where the loop thread is (its Python
stack), so a stall in production names its cause. ``hazardwatch_event_loop_lag_seconds`` is how
late the loop ran its last tick; ``hazardwatch_event_loop_stalls_total`` counts stalls.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("hazardwatch.loop")

TICK = 0.25  # seconds between stamps
STALL = 2.0  # seconds without a stamp that count as a stall


class LoopWatch:
    def __init__(self, registry: CollectorRegistry | None, *, tick: float = TICK, stall: float = STALL) -> None:
        self.tick, self.stall = tick, stall
        self.lag = Gauge("hazardwatch_event_loop_lag_seconds", "how late the event loop ran its last tick",
                         registry=registry)
        self.stalls = Counter("hazardwatch_event_loop_stalls_total",
                              f"times the event loop was held for more than {stall:g} s", registry=registry)
        self._stamp = time.monotonic()
        self._loop_thread: int | None = None
        self._stop = threading.Event()

    async def run(self) -> None:
        self._loop_thread = threading.get_ident()
        self._stamp = time.monotonic()
        watcher = threading.Thread(target=self._watch, name="hazardwatch-loopwatch", daemon=True)
        watcher.start()
        try:
            while True:
                before = time.monotonic()
                await asyncio.sleep(self.tick)
                now = time.monotonic()
                self.lag.set(max(0.0, now - before - self.tick))
                self._stamp = now
        finally:
            self._stop.set()

    def _watch(self) -> None:
        reported = 0.0  # the stamp of the stall already reported
        while not self._stop.wait(self.tick):
            stamp = self._stamp
            held = time.monotonic() - stamp
            if held < self.stall or stamp == reported:
                continue
            reported = stamp
            self.stalls.inc()
            frame = sys._current_frames().get(self._loop_thread or -1)
            where = "".join(traceback.format_stack(frame, limit=12)) if frame is not None else "(unknown)\n"
            log.warning("the event loop has been held for %.1f s; it is in:\n%s", held, where.rstrip())
