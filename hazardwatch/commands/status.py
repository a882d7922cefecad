"""``hazardwatch status [--config SITE.yaml] [--json]``: who leads, who stands by, and the database.

Exit status: 0 with a leader, 2 when no instance leads, 1 when the database cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime

import psycopg

from hazardwatch.commands.common import site_and_database
from park.db.cluster import ClusterStatus, cluster_status, database_nodes
from park.db.pool import safe_address
from park.types import to_shanghai

ROLES = {"leader": "主 leader", "standby": "备 standby", "offline": "离线 offline", "starting": "启动中 starting",
         "stopped": "已停止 stopped"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="cluster status: leader, standbys, lease, brokers, database and replication")
    p.add_argument("--config", help="site file (for its database URL; HAZARDWATCH_DATABASE_URL wins)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (found := site_and_database(args.config)) is None:
        return 1
    url = found[1]
    try:
        st = asyncio.run(_status(url))
    except psycopg.Error as e:
        print(f"✗ database {safe_address(url)} not reachable: {type(e).__name__}: "
              f"{(str(e).strip().splitlines() or [''])[-1]}", file=sys.stderr)
        return 1
    print(st.model_dump_json(indent=2) if args.json else render(st))
    return 0 if st.leader else 2


async def _status(url: str) -> ClusterStatus:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5) as conn:
        st = await cluster_status(conn)
    st.nodes = await database_nodes(url)
    return st


def _t(ts: datetime | None) -> str:
    return to_shanghai(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "—"


def render(st: ClusterStatus) -> str:
    lines = []
    lease = st.lease
    if st.leader and lease:
        lines.append(f"leader   {st.leader}  epoch {lease.epoch}, lease renewed {lease.age_seconds:.1f} s ago "
                     f"(ttl {lease.ttl_seconds:g} s), since {_t(lease.acquired_at)}")
    else:
        why = "no instance holds the lease" if not lease or not lease.held else "the lease is not being renewed"
        lines.append(f"leader   ✗ NONE — {why}; readings and alarms are not being handled")
    lines.append(f"standby  {', '.join(st.standbys) or '✗ none: a failure of the leader would stop monitoring'}")
    lines.append("")
    lines.append("instances")
    for i in st.instances:
        mark = "✓" if i.alive else "✗"
        brokers = i.detail.get("brokers")
        conn = ("  brokers: " + ", ".join(f"{b} {'✓' if (ok.get('connected') if isinstance(ok, dict) else ok) else '✗'}"
                                          for b, ok in brokers.items())) if isinstance(brokers, dict) else ""
        if i.detail.get("sync_replica_confirming") is False:  # park.db.syncrep
            conn += "  ✗ the synchronous replica confirms no commit: commits on the primary alone"
        lines.append(f"  {mark} {i.instance:<20} {ROLES.get(i.role, i.role):<16} pid {i.pid} on {i.host}, heartbeat "
                     f"{i.heartbeat_age_seconds:.0f} s ago{conn}")
    if not st.instances:
        lines.append("  (none registered)")
    db = st.database
    lines.append("")
    lines.append(f"database {db.server} PostgreSQL {db.version}, "
                 f"{'replica (read-only)' if db.in_recovery else 'primary'}")
    for r in db.replicas:
        lag = f", replay lag {r.replay_lag_seconds:.1f} s" if r.replay_lag_seconds is not None else ""
        lines.append(f"  replica {r.name or '?'} from {r.client_addr or 'local'}: {r.state}, {r.sync_state}{lag}")
    lines.append("  connections: " + ", ".join(f"{c.application} {c.count}" for c in db.connections))
    if st.nodes and len(st.nodes) > 1:
        lines.append("")
        lines.append("database hosts")
        for n in st.nodes:
            lag = (f", last replayed {n.since_last_replay_seconds:.0f} s ago"
                   if n.since_last_replay_seconds is not None else "")
            lines.append(f"  {n.host}:{n.port}  {n.role}  {n.detail}{lag}")
    return "\n".join(lines)
