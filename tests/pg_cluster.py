"""Private PostgreSQL clusters for tests: a primary and a streaming replica, failover by promotion.

Each node is a real cluster (``initdb``) in a temporary folder of its own on a free port of
127.0.0.1, run as the ``postgres`` user when the tests run as root. The server binaries come from
``HW_TEST_PGBIN``, else the folder of ``initdb`` on PATH, else the newest Debian PostgreSQL.
Nothing here touches the shared servers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg


def pg_bin() -> Path:
    if os.environ.get("HW_TEST_PGBIN"):
        return Path(os.environ["HW_TEST_PGBIN"])
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent
    majors = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()),
                    key=lambda p: int(p.parent.name))
    if not majors:
        raise RuntimeError("PostgreSQL server binaries not found: install them or set HW_TEST_PGBIN")
    return majors[-1]


def free_port(lo: int = 0, hi: int = 0) -> int:
    """A free TCP port of 127.0.0.1: any, or the first free one in ``lo … hi`` (a range set aside for the test)."""
    for port in range(lo, hi + 1) if lo else [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError(f"no free port in {lo}–{hi}")


class PgNode:
    """One PostgreSQL server of the test's own."""

    def __init__(self, root: Path, name: str, port: int = 0) -> None:
        self.root, self.name = root, name
        self.data = root / name
        self.port = port or free_port()
        self.log = root / f"{name}.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, tool: str, *args: str, timeout: float = 120) -> str:
        cmd = [str(pg_bin() / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def initdb(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n# private test node\nwal_level = replica\nmax_wal_senders = 4\nfsync = off\n"
                    "wal_keep_size = '64MB'\n")

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.log),
                 "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (a planned switch-over) or ``immediate`` (as good as a crash)."""
        self.run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def promote(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")

    def in_recovery(self) -> bool:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return bool(row and row[0])

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass


@contextmanager
def primary_and_replica(ports: tuple[int, int] = (0, 0)) -> Iterator[tuple[PgNode, PgNode]]:
    """A primary and a streaming replica made from it with ``pg_basebackup -R``, both running
    (on ``ports`` if given, else on any free ones)."""
    root = Path(tempfile.mkdtemp(prefix="hwha-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    primary, replica = PgNode(root, "primary", ports[0]), PgNode(root, "replica", ports[1])
    try:
        primary.initdb()
        primary.start()
        primary.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                    "-D", str(replica.data), "-R", "-X", "stream", "-c", "fast", "--no-sync")
        replica.start()
        wait_streaming(primary)
        yield primary, replica
    finally:
        for node in (replica, primary):
            node.remove()
        shutil.rmtree(root, ignore_errors=True)


def wait_streaming(primary: PgNode, within: float = 60) -> None:
    """Until the primary has a replica streaming from it."""
    with psycopg.connect(primary.url, autocommit=True) as conn:
        _until_replica(conn, "state = 'streaming'", f"no replica streaming from {primary.url}", within)


def synchronous(primary: PgNode, within: float = 60) -> None:
    """Make the primary's commits wait for the replica (``synchronous_standby_names = '*'``,
    ``synchronous_commit = on``): a commit acknowledged to the client is on the replica too.

    Set with ``ALTER SYSTEM`` on the primary only (``postgresql.auto.conf`` is not replicated): a
    promoted replica, with no standby of its own, must not wait for one."""
    with psycopg.connect(primary.url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        conn.execute("ALTER SYSTEM SET synchronous_commit = 'on'")
        conn.execute("SELECT pg_reload_conf()")
        _until_replica(conn, "sync_state = 'sync'", f"the replica of {primary.url} did not become synchronous",
                       within)


def _until_replica(conn: psycopg.Connection, where: str, failure: str, within: float) -> None:
    """Poll the primary's ``pg_stat_replication`` until a replica matches ``where`` (the server's state
    changes outside this process: there is nothing to wait on but the view)."""
    deadline = time.monotonic() + within
    while True:
        row = conn.execute(f"SELECT count(*) FROM pg_stat_replication WHERE {where}").fetchone()
        if row and row[0] >= 1:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{failure} within {within} s")
        time.sleep(0.05)


def multi_host_url(*nodes: PgNode, dbname: str = "postgres", **params: str) -> str:
    """A libpq multi-host URL over ``nodes`` that connects only to the one that takes writes."""
    hosts = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    query = "&".join(f"{k}={v}" for k, v in {"target_session_attrs": "read-write", **params}.items())
    return f"postgresql://postgres@{hosts}/{dbname}?{query}"
