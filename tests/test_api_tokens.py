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
