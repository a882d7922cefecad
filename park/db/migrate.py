"""Versioned, idempotent migrations, run at start-up and by ``hazardwatch db migrate``.

Migration files are ``migrations/NNNN_name.sql``; each is split into sections headed
``--@ all``, ``--@ timescaledb``, ``--@ full``, ``--@ self_managed`` and only the sections that
apply to the database's edition run. Every file runs once, recorded in ``schema_migrations``,
under an advisory lock so two starting processes never race.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from importlib import resources

from psycopg import AsyncConnection, errors

from park.errors import DatabaseError

_LOCK_KEY = 0x68617A61  # "haza": serialises concurrent migrators
_SECTION = re.compile(r"^--@\s*(\w+)\s*$", re.M)
_FILE = re.compile(r"^(\d{4})_[\w-]+\.sql$")


class Edition(enum.StrEnum):
    PLAIN = "postgresql"  # no TimescaleDB: plain tables, service-run retention and rollups
    APACHE = "timescaledb-apache"  # hypertables and drop_chunks; no compression or policies
    FULL = "timescaledb"  # Timescale-licensed: compression, continuous aggregates, policies

    @property
    def sections(self) -> set[str]:
        if self is Edition.FULL:
            return {"all", "timescaledb", "full"}
        if self is Edition.APACHE:
            return {"all", "timescaledb", "self_managed"}
        return {"all", "self_managed"}

    @property
    def hypertables(self) -> bool:
        return self is not Edition.PLAIN


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sections: dict[str, str]


def load_migrations() -> list[Migration]:
    out = []
    folder = resources.files("park.db") / "migrations"
    for entry in folder.iterdir():
        m = _FILE.match(entry.name)
        if not m:
            continue
        text = entry.read_text(encoding="utf-8")
        parts = _SECTION.split(text)
        sections: dict[str, str] = {"all": parts[0]} if parts[0].strip() else {}
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            sections[name] = sections.get(name, "") + body
        out.append(Migration(int(m.group(1)), entry.name, sections))
    out.sort(key=lambda mg: mg.version)
    versions = [mg.version for mg in out]
    if len(set(versions)) != len(versions):
        raise DatabaseError(f"two migration files share a number: {sorted(versions)}")
    return out


async def detect_edition(conn: AsyncConnection) -> Edition:
    """Install TimescaleDB if the server offers it; tell which edition this database has."""
    cur = await conn.execute(
        "SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    row = await cur.fetchone()
    if row is None:
        return Edition.PLAIN
    if row[1] is None:
        try:
            async with conn.transaction():
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except errors.Error:
            # Offered but not preloaded (shared_preload_libraries): run as plain PostgreSQL.
            return Edition.PLAIN
    cur = await conn.execute("SELECT current_setting('timescaledb.license', true)")
    lic = (await cur.fetchone() or [None])[0]
    return Edition.FULL if lic == "timescale" else Edition.APACHE


async def migrate(conn: AsyncConnection) -> tuple[Edition, list[str]]:
    """Bring the schema up to date; return the edition and the files applied now."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        edition = await detect_edition(conn)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, edition text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {r[0] for r in await cur.fetchall()}
        for mg in load_migrations():
            if mg.version in done:
                continue
            for section in ("all", "timescaledb", "full", "self_managed"):
                body = mg.sections.get(section, "")
                if section in edition.sections and body.strip():
                    try:
                        await conn.execute(body.encode())  # trusted, shipped SQL
                    except errors.Error as e:
                        raise DatabaseError(f"migration {mg.name} [{section}] failed: {e}") from e
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, edition) VALUES (%s, %s, %s)",
                (mg.version, mg.name, edition.value),
            )
            applied_now.append(mg.name)
    return edition, applied_now
