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
    """CONTRACT §6: `hazardwatch token create --unit CODE` needs only HAZARDWATCH_DATABASE_URL; the units
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
