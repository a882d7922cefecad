"""Who is running, who leads, and what the database looks like — for ``hazardwatch status`` and
``/api/v1/cluster``.

Every instance registers itself in ``ha_instances`` and keeps a heartbeat there (``Beacon``);
``cluster_status`` reads that, the lease (``park.db.lease``), the connections and the
replication state of the server it is connected to. ``database_nodes`` asks each host of a
multi-host URL on its own, so an operator sees which is the primary and how far replicas lag.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from park.db.lease import backoff, lock_key

log = logging.getLogger("hazardwatch.cluster")

STALE_AFTER = 30.0  # seconds without a heartbeat before an instance counts as gone


def default_instance_id() -> str:
    """``HAZARDWATCH_INSTANCE``, else the host name: stable, so a restart replaces its own row."""
    return (os.environ.get("HAZARDWATCH_INSTANCE") or socket.gethostname())[:100]


class Beacon:
    """Keeps this instance's row in ``ha_instances`` fresh; ``run()`` until cancelled.

    ``role()`` answers (role, epoch) — e.g. from ``Elector.role`` and its term — and ``detail()``
    what the instance says of itself (brokers connected, stages degraded …; JSON-serialisable).
    A database fault is retried; on cancellation the row says ``stopped``.
    """

    def __init__(self, pool: AsyncConnectionPool, instance: str, *, role: Callable[[], tuple[str, int | None]],
                 detail: Callable[[], dict[str, Any]] | None = None, http_url: str | None = None,
                 version: str = "", every: float = 5.0) -> None:
        self.pool, self.instance, self.role, self.detail = pool, instance, role, detail
        self.http_url, self.version, self.every = http_url, version, every
        self.beats = 0

    async def beat(self, role: str | None = None) -> None:
        r, epoch = self.role()
        detail = self.detail() if self.detail else {}
        async with self.pool.connection(timeout=5) as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO ha_instances (instance, host, pid, role, epoch, started_at, heartbeat_at, version,"
                " http_url, detail) VALUES (%s, %s, %s, %s, %s, now(), now(), %s, %s, %s)"
                " ON CONFLICT (instance) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
                " role = excluded.role, epoch = excluded.epoch, heartbeat_at = now(), version = excluded.version,"
                " http_url = excluded.http_url, detail = excluded.detail,"
                " started_at = CASE WHEN ha_instances.pid = excluded.pid AND ha_instances.role <> 'stopped'"
                "                   THEN ha_instances.started_at ELSE excluded.started_at END",
                (self.instance, socket.gethostname(), os.getpid(), role or r, epoch, self.version, self.http_url,
                 json.dumps(detail, ensure_ascii=False, default=str)))
        self.beats += 1

    async def run(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    await self.beat()
                    failures = 0
                    await asyncio.sleep(self.every)
                except (psycopg.Error, OSError) as e:
                    log.warning("instance heartbeat: database: %s", type(e).__name__)
                    await asyncio.sleep(min(self.every, backoff(failures)))
                    failures += 1
        finally:
            try:
                async with asyncio.timeout(2):
                    await self.beat("stopped")
            except (psycopg.Error, OSError, TimeoutError, asyncio.CancelledError):
                pass


class LeaseStatus(BaseModel):
    name: str
    epoch: int
    holder: str | None
    acquired_at: datetime | None
    renewed_at: datetime | None
    age_seconds: float | None  # since the last renewal, on the database's clock
    ttl_seconds: float
    held: bool  # a live session holds the lease's advisory lock
    current: bool  # held and renewed within its ttl: there is a leader


class InstanceStatus(BaseModel):
    instance: str
    host: str
    pid: int
    role: str
    epoch: int | None
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_seconds: float
    alive: bool
    version: str
    http_url: str | None
    detail: dict[str, Any]


class ReplicaStatus(BaseModel):
    name: str
    client_addr: str | None
    state: str | None
    sync_state: str | None
    replay_lag_seconds: float | None


class ConnectionCount(BaseModel):
    application: str
    count: int


class DatabaseStatus(BaseModel):
    server: str  # the server this answer comes from
    version: str
    in_recovery: bool  # pg_is_in_recovery(): a replica (read-only) when true
    replicas: list[ReplicaStatus]  # streaming from this server (needs pg_monitor or superuser to see all)
    connections: list[ConnectionCount]  # to this database, by application name


class NodeStatus(BaseModel):
    """One host of a multi-host database URL, asked on its own."""

    host: str
    port: str
    role: str  # primary | replica | unreachable
    detail: str
    since_last_replay_seconds: float | None = None  # replica: age of the last transaction it replayed


class ClusterStatus(BaseModel):
    now: datetime
    leader: str | None
    standbys: list[str]
    lease: LeaseStatus | None
    instances: list[InstanceStatus]
    database: DatabaseStatus
    nodes: list[NodeStatus] | None = None


async def cluster_status(conn: AsyncConnection, *, lease: str = "leader", stale_after: float = STALE_AFTER
                         ) -> ClusterStatus:
    """The cluster as this database sees it (read-only queries)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT now() AS now")
        now = (await cur.fetchone() or {})["now"]
        await cur.execute(
            "SELECT l.name, l.epoch, l.holder, l.acquired_at, l.renewed_at,"
            " extract(epoch FROM now() - l.renewed_at)::float8 AS age_seconds,"
            " extract(epoch FROM l.ttl)::float8 AS ttl_seconds,"
            " EXISTS (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2"
            "         AND k.classid = %s::oid AND k.objid = %s::oid"
            "         AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())) AS held"
            " FROM ha_lease l WHERE l.name = %s", (*lock_key(lease), lease))
        row = await cur.fetchone()
        lease_st = None
        if row is not None:
            current = bool(row["held"] and row["holder"] and row["age_seconds"] is not None
                           and row["age_seconds"] <= row["ttl_seconds"])
            lease_st = LeaseStatus(**row, current=current)
        await cur.execute(
            "SELECT instance, host, pid, role, epoch, started_at, heartbeat_at, version, http_url, detail,"
            " extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_seconds"
            " FROM ha_instances ORDER BY instance")
        instances = [InstanceStatus(**r, alive=r["role"] != "stopped" and r["heartbeat_age_seconds"] <= stale_after)
                     for r in await cur.fetchall()]
        database = await _database(cur)
    leader = lease_st.holder if lease_st is not None and lease_st.current else None
    standbys = [i.instance for i in instances if i.alive and i.role == "standby" and i.instance != leader]
    return ClusterStatus(now=now, leader=leader, standbys=standbys, lease=lease_st, instances=instances,
                         database=database)


async def _database(cur: psycopg.AsyncCursor[dict[str, Any]]) -> DatabaseStatus:
    await cur.execute("SELECT coalesce(host(inet_server_addr()), 'local') || ':' || current_setting('port') AS server,"
                      " current_setting('server_version') AS version, pg_is_in_recovery() AS in_recovery")
    base = await cur.fetchone() or {}
    await cur.execute(
        "SELECT application_name AS name, host(client_addr) AS client_addr, state, sync_state,"
        " extract(epoch FROM replay_lag)::float8 AS replay_lag_seconds FROM pg_stat_replication ORDER BY 1")
    replicas = [ReplicaStatus(**r) for r in await cur.fetchall()]
    await cur.execute(
        "SELECT coalesce(nullif(application_name, ''), '(unnamed)') AS application, count(*)::int AS count"
        " FROM pg_stat_activity WHERE datname = current_database() GROUP BY 1 ORDER BY 1")
    connections = [ConnectionCount(**r) for r in await cur.fetchall()]
    return DatabaseStatus(**base, replicas=replicas, connections=connections)


async def database_nodes(url: str, *, connect_timeout: int = 3) -> list[NodeStatus]:
    """Each host of ``url`` (a libpq multi-host URL or a single host), asked directly."""
    params = conninfo_to_dict(url)
    hosts = str(params.get("host") or "localhost").split(",")
    ports = str(params.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    out = []
    for host, port in zip(hosts, ports, strict=False):
        one: dict[str, Any] = {**params, "host": host, "port": port, "target_session_attrs": "any",
                               "connect_timeout": connect_timeout}
        one.pop("hostaddr", None)
        try:
            async with await AsyncConnection.connect(make_conninfo("", **one), autocommit=True) as conn:
                cur = await conn.execute(
                    "SELECT pg_is_in_recovery(), extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,"
                    " (SELECT count(*) FROM pg_stat_replication)")
                rec, lag, nrep = await cur.fetchone() or (False, None, 0)
            if rec:
                out.append(NodeStatus(host=host, port=port, role="replica", since_last_replay_seconds=lag,
                                      detail="read-only, replaying from the primary"))
            else:
                out.append(NodeStatus(host=host, port=port, role="primary", detail=f"{nrep} replica(s) streaming"))
        except (psycopg.Error, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            out.append(NodeStatus(host=host, port=port, role="unreachable", detail=first[:200]))
    return out
