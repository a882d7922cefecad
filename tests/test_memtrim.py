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

    def rss_mb():
        with open("/proc/self/status") as f:
            return int(next(x for x in f if x.startswith("VmRSS")).split()[1]) / 1024

    # a burst: 80 MB in 2 KB blocks (from the C heap, not Python's small-object arenas); one block in
    # 64 stays alive, and the last one, so the heap cannot simply shrink from its top
    burst = [bytes(2048) for _ in range(40_000)]
    kept = burst[::64] + [burst[-1]]
    del burst
    before = rss_mb()
    trimmed = MemoryTrim().trim() if sys.argv[1] == "trim" else False
    print(before, rss_mb(), trimmed, len(kept))
""")


def _run(mode: str) -> tuple[float, float, bool]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True).stdout
    before, after, trimmed, _ = out.split()
    return float(before), float(after), trimmed == "True"


@pytest.mark.skipif(not MemoryTrim().available, reason="no malloc_trim in this C library")
def test_memory_a_burst_freed_is_given_back_to_the_system_by_the_trim() -> None:
    before, after, trimmed = _run("trim")
    assert trimmed
    assert before - after > 40, f"resident {before:.0f} MB → {after:.0f} MB after the trim"
    # and it is the trim that does it: left alone, the freed blocks stay resident
    before, after, _ = _run("none")
    assert before - after < 5, f"resident {before:.0f} MB → {after:.0f} MB without a trim"


TUNED = textwrap.dedent("""
    import sys
    from hazardwatch.memtrim import tune_allocator

    def rss_mb():
        with open("/proc/self/status") as f:
            return int(next(x for x in f if x.startswith("VmRSS")).split()[1]) / 1024

    tuned = tune_allocator() if sys.argv[1] == "tune" else False
    del bytearray(4 << 20)[:]  # a 4 MiB buffer freed: glibc untuned raises its mmap threshold past it
    # a burst of large buffers (as a COPY payload of a backlog's batch), a small block kept after each
    burst, kept = [], []
    for _ in range(100):
        burst.append(bytearray(600 * 1024))
        kept.append(bytes(2048))
    before = rss_mb()
    del burst
    print(before, rss_mb(), tuned)
""")


@pytest.mark.skipif(not MemoryTrim().available, reason="not glibc")
def test_memory_large_buffers_of_a_burst_go_back_when_freed_with_the_allocator_tuned() -> None:
    def run(mode: str) -> tuple[float, float, bool]:
        out = subprocess.run([sys.executable, "-c", TUNED, mode], capture_output=True, text=True, check=True).stdout
        before, after, tuned = out.split()
        return float(before), float(after), tuned == "True"

    before, after, tuned = run("tune")
    assert tuned
    assert before - after > 45, f"resident {before:.0f} MB → {after:.0f} MB once the burst was freed"
    before, after, _ = run("none")  # glibc's defaults keep them
    assert before - after < 10, f"resident {before:.0f} MB → {after:.0f} MB untuned"
