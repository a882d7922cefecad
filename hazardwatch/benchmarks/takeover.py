"""Takeover time between two real processes: the leader killed with SIGKILL, or frozen with SIGSTOP.

    python -m hazardwatch.benchmarks.takeover --database-url URL [--runs 5] [--ttl 10] [--retry 1]

Each run starts two candidate processes on a lease of the benchmark's own (a running service's
lease is never touched). Once it leads, a candidate writes a fenced row every 50 ms and
keeps writing with that term — never consulting its own clock — until the database refuses it,
so only the database's fencing stands between a resumed old leader and the table. A run kills or
freezes the leader, times how long the other takes to lead, and — for a frozen leader — resumes
it and checks that it was refused, wrote nothing after the takeover, and stepped down. Prints
the median and range of each kind.

``candidate`` is one such process (JSON lines on stdout); the tests drive it too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from park.db.lease import Elector, Fenced, Term, fence
from park.db.migrate import migrate

PROBE = "ha_takeover_probe"


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def candidate(url: str, instance: str, lease: str, ttl: float, retry: float) -> None:
    el = Elector(url, instance, name=lease, ttl=ttl, retry_every=retry)
    el.listen(lambda role, term, reason: emit(event=role, epoch=term.epoch if term else None, reason=reason))

    async def write_until_refused(term: Term) -> None:
        """Write as a leader that never looks at its clock: only the database can stop it."""
        n = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url) as conn:
                    while True:
                        async with conn.transaction():
                            await fence(conn, term)
                            await conn.execute(
                                f"INSERT INTO {PROBE} (lease, instance, epoch, n) VALUES (%s, %s, %s, %s)",
                                (lease, instance, term.epoch, n))
                        n += 1
                        await asyncio.sleep(0.05)
            except Fenced:
                emit(event="fenced", epoch=term.epoch, written=n)
                return
            except psycopg.Error as e:  # e.g. the server ended a transaction frozen mid-way: go again
                emit(event="write-error", epoch=term.epoch, written=n, error=type(e).__name__)
                await asyncio.sleep(0.05)

    async def writer() -> None:
        while True:
            await write_until_refused(await el.wait_leading())

    async with asyncio.TaskGroup() as tg:
        tg.create_task(el.run())
        tg.create_task(writer())


class Candidate:
    """A candidate process and the events it printed."""

    def __init__(self, url: str, instance: str, lease: str, ttl: float, retry: float) -> None:
        self.instance = instance
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hazardwatch.benchmarks.takeover", "candidate", "--database-url", url,
             "--instance", instance, "--lease", lease, "--ttl", str(ttl), "--retry", str(retry)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue

    def wait_for(self, event: str | tuple[str, ...], within: float, since: int | None = None) -> dict[str, Any]:
        """The next event of that kind; fails after ``within`` s.

        Events read while waiting are kept in ``seen``; with ``since`` (an index into ``seen``)
        one already seen from there on counts too.
        """
        want = (event,) if isinstance(event, str) else event
        if since is not None:
            for e in self.seen[since:]:
                if e["event"] in want:
                    return e
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"candidate {self.instance}: no {want} within {within} s; saw {self.seen}")
            try:
                e = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(e)
            if e["event"] in want:
                return e

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass(frozen=True, slots=True)
class Run:
    mode: str  # kill | stop
    seconds: float  # signal → the other process leads
    old_epoch: int
    new_epoch: int
    written_after: int  # rows of the old term committed after the takeover: must be 0
    stepped_down: bool  # the resumed old leader stepped down (stop only)


def count_rows(url: str, lease: str, epoch: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {PROBE} WHERE lease = %s AND epoch = %s", (lease, epoch)).fetchone()
        return int(row[0]) if row else 0


def prepare(url: str) -> None:
    asyncio.run(_migrate(url))
    with psycopg.connect(url) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {PROBE} (lease text, instance text, epoch bigint, n integer,"
                     " at timestamptz NOT NULL DEFAULT clock_timestamp())")


async def _migrate(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)


def one_run(url: str, mode: str, *, ttl: float, retry: float, within: float = 120.0) -> Run:
    """Two candidates; the leader killed (``kill``) or frozen and resumed (``stop``)."""
    lease = f"takeover-{uuid.uuid4().hex[:8]}"
    a = Candidate(url, "a", lease, ttl, retry)
    b: Candidate | None = None
    try:
        first = a.wait_for("leader", within)
        b = Candidate(url, "b", lease, ttl, retry)
        b.wait_for("standby", within)
        a.signal(signal.SIGKILL if mode == "kill" else signal.SIGSTOP)
        t0 = time.monotonic()
        took = b.wait_for("leader", within)
        seconds = time.monotonic() - t0
        at_takeover = count_rows(url, lease, first["epoch"])
        stepped_down = False
        if mode == "stop":
            resumed = len(a.seen)
            a.signal(signal.SIGCONT)
            a.wait_for("fenced", within)  # its writer, which never checks its clock, is refused
            a.wait_for(("standby", "offline"), within, since=resumed)
            stepped_down = True
        written_after = count_rows(url, lease, first["epoch"]) - at_takeover
        return Run(mode, seconds, first["epoch"], took["epoch"], written_after, stepped_down)
    finally:
        for c in (a, b):
            if c is not None:
                c.stop()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {PROBE} WHERE lease = %s", (lease,))
            conn.execute("DELETE FROM ha_lease WHERE name = %s", (lease,))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hazardwatch.benchmarks.takeover", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", choices=["bench", "candidate"], default="bench")
    p.add_argument("--database-url", default=os.environ.get("HAZARDWATCH_DATABASE_URL"))
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--ttl", type=float, default=10.0, help="lease time to live, seconds (the service's default)")
    p.add_argument("--retry", type=float, default=1.0, help="how often a standby tries to take over, seconds")
    p.add_argument("--instance", default="a")
    p.add_argument("--lease", default="takeover")
    args = p.parse_args(argv)
    if not args.database_url:
        p.error("set --database-url or HAZARDWATCH_DATABASE_URL")
    if args.mode == "candidate":
        try:
            asyncio.run(candidate(args.database_url, args.instance, args.lease, args.ttl, args.retry))
        except KeyboardInterrupt:
            pass
        return 0
    prepare(args.database_url)
    print(f"takeover between two processes, lease ttl {args.ttl:g} s, standby retry {args.retry:g} s, "
          f"{args.runs} runs each", flush=True)
    for mode, what in (("kill", "leader kill -9"), ("stop", "leader SIGSTOP, resumed after the takeover")):
        runs = []
        for i in range(args.runs):
            r = one_run(args.database_url, mode, ttl=args.ttl, retry=args.retry)
            runs.append(r)
            print(f"  {what}: run {i + 1}: {r.seconds:.2f} s (epoch {r.old_epoch} → {r.new_epoch}, "
                  f"old leader's rows after takeover {r.written_after})", flush=True)
        secs = [r.seconds for r in runs]
        print(f"{what}: median {statistics.median(secs):.2f} s (min {min(secs):.2f}, max {max(secs):.2f}); "
              f"rows written by the old leader after the takeover: {sum(r.written_after for r in runs)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
