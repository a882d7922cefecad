"""Freed memory given back to the system: glibc limited to two arenas at start-up, and trimmed
once a minute (``malloc_trim``).

A long-running service frees most of what a burst allocated — a backlog drained, a large query's
rows, a scrape of ``/metrics`` written in a worker thread — but glibc keeps freed pages inside its
heaps and its per-thread arenas: resident memory steps up with each burst and does not come down,
and a memory bar ("flat over 30 minutes") measures bursts long past, not what is held.
``malloc_trim(0)`` hands every whole free page of every arena back (``madvise``); it takes a few
milliseconds, so it runs in a worker thread. Where the C library has no ``malloc_trim`` (musl,
macOS) nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

log = logging.getLogger("hazardwatch.memtrim")

EVERY_S = 60.0
M_ARENA_MAX = -8  # a mallopt parameter (malloc.h)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _libc_trim() -> Callable[[int], int] | None:
    fn = getattr(_libc(), "malloc_trim", None)
    if fn is None:
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def tune_allocator(arenas: int = 2) -> bool:
    """At start-up, before threads: at most ``arenas`` malloc arenas. glibc makes up to 8 per core,
    one for each thread that allocates, and each keeps its own high-water mark: the ingest writers'
    worker threads (COPY payloads) each held a burst's worth. Whether the C library took it.

    The mmap threshold is left dynamic: fixed at its 128 KiB start, every numpy temporary of a large
    registry was a fresh mapping (page faults on every batch: restart at 440,000 sensors 15 → 31 s)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


class MemoryTrim:
    """``trim()`` once; ``run()`` every ``every_s`` seconds (a supervised task of the service)."""

    def __init__(self, every_s: float = EVERY_S) -> None:
        self.every_s = every_s
        self._fn = _libc_trim()

    @property
    def available(self) -> bool:
        return self._fn is not None

    def trim(self) -> bool:
        """Give free pages back; whether any were (False where the C library cannot)."""
        if self._fn is None:
            return False
        return bool(self._fn(0))

    async def run(self) -> None:
        if self._fn is None:
            log.info("malloc_trim is not in this C library: freed memory stays with the allocator")
            await asyncio.Event().wait()  # nothing to do, and not a stage that ended (supervise restarts those)
        while True:
            await asyncio.sleep(self.every_s)
            await asyncio.to_thread(self.trim)
