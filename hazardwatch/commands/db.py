"""``hazardwatch db migrate [--config SITE.yaml]``: bring the schema up to date (and sync the registry)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import psycopg

from hazardwatch.commands.common import site_and_database
from park.db.migrate import migrate
from park.db.registry import sync_registry
from park.errors import HazardwatchError
from park.site import Site


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="database schema")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    m = dsub.add_parser("migrate", help="apply migrations (idempotent); with --config also sync the registry")
    m.add_argument("--config", help="site file whose sensors to sync into the registry")
    m.set_defaults(func=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    if (found := site_and_database(args.config)) is None:
        return 1
    return asyncio.run(_migrate(found[1], found[0]))


async def _migrate(url: str, site: Site | None) -> int:
    try:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            edition, applied = await migrate(conn)
            print(f"✓ schema up to date on {edition.value}; applied now: {', '.join(applied) or 'nothing'}")
            if site is not None:
                park = await sync_registry(conn, site)
                print(f"✓ registry synced: {len(park.sensors)} sensors")
    except (psycopg.OperationalError, HazardwatchError) as e:
        print(f"✗ database: {e}", file=sys.stderr)
        return 1
    return 0
