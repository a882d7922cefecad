"""``hazardwatch token create|list|revoke``: API tokens, one unit each (or ``park`` for the duty room)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import psycopg

from hazardwatch.api.auth import create_token, revoke_token
from hazardwatch.commands.common import site_and_database
from park.db.migrate import migrate
from park.db.pool import safe_address
from park.model import Park


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="API tokens for the duty room, towns, districts and enterprises")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    c = tsub.add_parser("create", help="create a token for one unit; it is printed once")
    c.add_argument("--unit", required=True, help="district, town or enterprise code, or 'park' for the duty room")
    c.add_argument("--name", default="", help="who or what it is for")
    c.add_argument("--config", help="site file (without it: HAZARDWATCH_DATABASE_URL, units from the database)")
    c.set_defaults(func=lambda a: _run(a, "create"))
    ls = tsub.add_parser("list", help="tokens (never the secrets)")
    ls.add_argument("--config", help="site file (without it: HAZARDWATCH_DATABASE_URL)")
    ls.set_defaults(func=lambda a: _run(a, "list"))
    rv = tsub.add_parser("revoke", help="revoke a token by its id (see list)")
    rv.add_argument("id", type=int)
    rv.add_argument("--config", help="site file (without it: HAZARDWATCH_DATABASE_URL)")
    rv.set_defaults(func=lambda a: _run(a, "revoke"))


def _run(args: argparse.Namespace, action: str) -> int:
    """With ``--config``, the site file's settings and units; without it, only the database (docs/contract.md §6)."""
    if (found := site_and_database(args.config)) is None:
        return 1
    site, url = found
    park = Park.from_site(site) if site is not None else None
    try:
        return asyncio.run(_act(url, park, args, action))
    except psycopg.OperationalError as e:
        print(f"✗ the database {safe_address(url)} is not reachable: {type(e).__name__}", file=sys.stderr)
        return 1


async def _act(url: str, park: Park | None, args: argparse.Namespace, action: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
        if action == "create":
            try:
                token = await create_token(conn, park, args.unit, args.name)
            except ValueError as e:
                print(f"✗ {e}", file=sys.stderr)
                return 1
            await conn.commit()
            print(token)
            print(f"  unit {args.unit}: keep it safe, it is not shown again", file=sys.stderr)
        elif action == "list":
            cur = await conn.execute("SELECT id, unit_code, name, created_at, revoked_at, last_used_at"
                                     " FROM api_tokens ORDER BY id")
            for r in await cur.fetchall():
                state = "revoked" if r[4] else "active"
                print(f"{r[0]:>5}  {r[1]:<12} {state:<8} {r[2]}  created {r[3]:%Y-%m-%d}")
        else:
            done = await revoke_token(conn, args.id)  # running services close its live streams within seconds
            await conn.commit()
            if not done:
                print(f"✗ no active token {args.id}", file=sys.stderr)
                return 1
            print(f"✓ token {args.id} revoked")
    return 0
