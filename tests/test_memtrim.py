"""Freed memory goes back to the system (hazardwatch.memtrim): what a burst allocated and freed no
longer counts in the service's resident memory — large buffers at once (the allocator tuned at
start-up), the rest once the minute's trim has run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from hazardwatch.memtrim import MemoryTrim

SCRIPT = textwrap.dedent("""
    import sys
    from hazardwatch.memtrim import MemoryTrim


    # a burst: 80 MB in 2 KB blocks (from the C heap, not Python's small-object arenas); one block in
    # 64 stays alive, and the last one, so the heap cannot simply shrink from its top
    burst = [bytes(2048) for _ in range(40_000)]
    kept = burst[::64] + [burst[-1]]
    del burst
    before = rss_mb()
    trimmed = MemoryTrim().trim() if sys.argv[1] == "trim" else False
    print(before, rss_mb(), trimmed, len(kept))
""")


RSS_MB = """
def rss_mb():
    with open("/proc/self/status") as f:
        return int(next(x for x in f if x.startswith("VmRSS")).split()[1]) / 1024
"""


def _script(src: str, mode: str) -> list[str]:
    """Run ``src`` (with ``rss_mb()``) in a fresh interpreter: a process of its own measures its own memory."""
    return subprocess.run([sys.executable, "-c", RSS_MB + src, mode], capture_output=True, text=True,
                          check=True).stdout.split()


def _run(mode: str) -> tuple[float, float, bool]:
    before, after, trimmed, _ = _script(SCRIPT, mode)
    return float(before), float(after), trimmed == "True"


@pytest.mark.skipif(not MemoryTrim().available, reason="no malloc_trim in this C library")
def test_memory_a_burst_freed_is_given_back_to_the_system_by_the_trim() -> None:
    before, after, trimmed = _run("trim")
    assert trimmed
    assert before - after > 40, f"resident {before:.0f} MB → {after:.0f} MB after the trim"
    # and it is the trim that does it: left alone, the freed blocks stay resident
    before, after, _ = _run("none")
    assert before - after < 5, f"resident {before:.0f} MB → {after:.0f} MB without a trim"


THREADS = textwrap.dedent("""
    import sys, threading
    from hazardwatch.memtrim import tune_allocator


    tuned = tune_allocator() if sys.argv[1] == "tune" else False
    kept = []
    turns = [threading.Event() for _ in range(7)]
    done = threading.Event()

    def worker(i):  # six writer threads alive together, each with a burst of its own in turn
        turns[i].wait()
        burst = [bytes(2048) for _ in range(8_000)]  # 16 MB from the C heap
        kept.append(bytes(2048))  # allocated after the burst: its arena cannot shrink from the top
        del burst
        turns[i + 1].set()
        done.wait()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    base = rss_mb()
    turns[0].set()
    turns[6].wait()
    print(rss_mb() - base, tuned)
    done.set()
""")


@pytest.mark.skipif(not MemoryTrim().available, reason="not glibc")
def test_memory_writer_threads_share_two_arenas_so_their_bursts_reuse_one_high_water_mark() -> None:
    def run(mode: str) -> tuple[float, bool]:
        grown, tuned = _script(THREADS, mode)
        return float(grown), tuned == "True"

    grown, tuned = run("tune")
    assert tuned
    assert grown < 40, f"six bursts of 16 MB, one after the other, left {grown:.0f} MB resident"
    grown, _ = run("none")  # glibc's default: an arena per thread, each keeping its burst
    assert grown > 70, f"untuned: {grown:.0f} MB"


def test_memory_without_malloc_trim_the_task_waits_instead_of_ending() -> None:
    """Under another C library the supervised task must not return: supervise would log it as a stage
    that ended and restart it for ever."""
    import asyncio

    async def main() -> bool:
        t = MemoryTrim()
        t._fn = None
        task = asyncio.create_task(t.run())
        for _ in range(5):
            await asyncio.sleep(0)
        done = task.done()
        task.cancel()
        return done

    assert not asyncio.run(main())
