"""Two real candidate processes: the leader killed with SIGKILL, or frozen with SIGSTOP and resumed.

The candidates (hazardwatch.benchmarks.takeover) write a fenced row every 50 ms while they lead and
never look at their own clock first, so only the database's fencing keeps a resumed old leader out.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hazardwatch.benchmarks.takeover import one_run, prepare

TTL, RETRY = 2.0, 0.2


@pytest.mark.slow
def test_leader_killed_the_standby_takes_over(make_database: Callable[..., str]) -> None:
    url = make_database("postgres", "hwha")
    prepare(url)
    r = one_run(url, "kill", ttl=TTL, retry=RETRY, within=60)
    print(f"takeover after kill -9: {r.seconds:.2f} s")
    assert r.new_epoch == r.old_epoch + 1
    assert r.written_after == 0


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["postgres", "timescaledb"])
def test_leader_frozen_then_resumed_writes_nothing_and_steps_down(make_database: Callable[..., str],
                                                                    flavor: str) -> None:
    url = make_database(flavor, "hwha")
    prepare(url)
    r = one_run(url, "stop", ttl=TTL, retry=RETRY, within=60)
    print(f"takeover after SIGSTOP: {r.seconds:.2f} s")
    assert r.new_epoch == r.old_epoch + 1
    assert r.written_after == 0, "the resumed old leader wrote after the takeover"
    assert r.stepped_down
