"""``hazardwatch token create|list|revoke``: printed once, stored hashed, scoped to a unit, revocable."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from hazardwatch.api.auth import hash_token, lookup
from tests.site_helpers import MINIMAL_SITE


def hw(*args: str, db: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HAZARDWATCH_DATABASE_URL=db)
    return subprocess.run([str(Path(sys.executable).with_name("hazardwatch")), "token", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_create_list_revoke(make_database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = make_database("postgres", "hwd")
    site = tmp_path / "site.yaml"
    site.write_text(MINIMAL_SITE, encoding="utf-8")
    made = hw("create", "--unit", "LJ", "--name", "临江镇值班", "--config", str(site), db=db)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("hw_") and len(token) > 40
    assert hw("create", "--unit", "NOPE", "--config", str(site), db=db).returncode == 1
    with psycopg.connect(db) as conn:
        [(stored,)] = conn.execute("SELECT token_hash FROM api_tokens").fetchall()
    assert stored == hash_token(token) and token not in stored  # only the hash is kept
    listed = hw("list", "--config", str(site), db=db)
    assert "LJ" in listed.stdout and token not in listed.stdout

    async def who() -> object:
        async with await psycopg.AsyncConnection.connect(db) as conn:
            return await lookup(conn, token)

    p = asyncio.run(who())
    assert p is not None and p.unit == "LJ"  # type: ignore[attr-defined]
    assert hw("revoke", "1", "--config", str(site), db=db).returncode == 0
    assert asyncio.run(who()) is None
    assert hw("revoke", "1", "--config", str(site), db=db).returncode == 1


def test_create_with_only_the_database_as_the_contract_says(make_database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """docs/contract.md §6: `hazardwatch token create --unit CODE` needs only HAZARDWATCH_DATABASE_URL; the units
    are the ones the service keeps in the database."""
    db = make_database("postgres", "hwd")
    site = tmp_path / "site.yaml"
    site.write_text(MINIMAL_SITE, encoding="utf-8")
    # before any site was synced the database knows no unit: refused with what to do
    refused = hw("create", "--unit", "LJ", db=db)
    assert refused.returncode == 1 and "db migrate --config" in refused.stderr, refused.stderr
    # the duty room's token needs no unit from the registry
    assert hw("create", "--unit", "park", db=db).returncode == 0
    sync = subprocess.run([str(Path(sys.executable).with_name("hazardwatch")), "db", "migrate", "--config", str(site)],
                          env=dict(os.environ, HAZARDWATCH_DATABASE_URL=db), capture_output=True, text=True,
                          timeout=120)
    assert sync.returncode == 0, sync.stderr
    made = hw("create", "--unit", "LJ", "--name", "临江镇值班", db=db)
    assert made.returncode == 0, made.stderr
    assert hw("create", "--unit", "NOPE", db=db).returncode == 1
    listed = hw("list", db=db)
    assert "LJ" in listed.stdout and made.stdout.strip() not in listed.stdout
    assert hw("revoke", "2", db=db).returncode == 0
    no_db = subprocess.run([str(Path(sys.executable).with_name("hazardwatch")), "token", "list"],
                           env={k: v for k, v in os.environ.items() if k != "HAZARDWATCH_DATABASE_URL"},
                           capture_output=True, text=True, timeout=60)
    assert no_db.returncode == 1 and "HAZARDWATCH_DATABASE_URL" in no_db.stderr


def test_a_token_created_just_before_an_outage_is_answered_503_not_401(make_database) -> None:  # type: ignore[no-untyped-def]
    """A new token not yet in the book, met while the database is away: 'try again', never 'invalid'."""
    from psycopg import OperationalError
    from psycopg_pool import AsyncConnectionPool

    from hazardwatch.api.auth import TokenBook, create_token
    from hazardwatch.api.context import principal
    from park.db import migrate

    db = make_database("postgres", "hwd")

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await migrate(conn)
        now = [0.0]
        async with AsyncConnectionPool(db, min_size=1, max_size=2, open=False) as pool:
            async with pool.connection() as conn:
                old = await create_token(conn, None, "park", "早班")
            book = TokenBook(pool, max_age=3.0, monotonic=lambda: now[0])
            assert await book.check(old) is not None  # the book is loaded with it
            async with pool.connection() as conn:
                new = await create_token(conn, None, "park", "刚建的")

            class Away:  # fault injection: every connection attempt fails as a dead server does
                def connection(self, *a: object, **k: object) -> object:
                    raise OperationalError("connection refused")

            book.pool = Away()  # type: ignore[assignment]
            now[0] = 10.0  # the book is stale: its reload fails and it keeps what it had
            assert (await book.check(old)) is not None  # known operators stay logged in
            try:
                await book.check(new)
            except OperationalError:
                pass  # answered 503 by the application
            else:
                raise AssertionError("a token unknown only because the database is away was called invalid")

            from types import SimpleNamespace

            def not_reached(*_a: object) -> float:  # stands in for FailureLimiter.blocked
                raise AssertionError("an outage was counted as a failed token")

            req = SimpleNamespace(headers={"authorization": f"Bearer {new}"}, query_params={}, client=None)
            ctx = SimpleNamespace(tokens=book, limiter=SimpleNamespace(blocked=not_reached))
            try:
                await principal(req, ctx)  # type: ignore[arg-type]
            except OperationalError:
                pass
            else:
                raise AssertionError("expected the database error to reach the 503 handler")

    asyncio.run(go())
