"""Fixtures every test file shares: fresh databases on real servers, the broker, topic prefixes.

Servers come from the environment `bash tests/run.sh` sets up (HW_TEST_PG_URL, HW_TEST_TSDB_URL,
HW_TEST_MQTT_URL). A server that does not answer fails the test that needs it — never a skip.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

PG_ENV, TSDB_ENV, MQTT_ENV = "HW_TEST_PG_URL", "HW_TEST_TSDB_URL", "HW_TEST_MQTT_URL"
_DEFAULTS = {
    PG_ENV: "postgresql://postgres@127.0.0.1:5432/postgres",
    TSDB_ENV: "postgresql://postgres@127.0.0.1:5433/postgres",
    MQTT_ENV: "mqtt://127.0.0.1:1883",
}


def _url(env: str) -> str:
    return os.environ.get(env) or _DEFAULTS[env]


def _admin_connect(url: str, env: str) -> psycopg.Connection:
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(f"database server {url} ({env}) does not answer: {e}\nstart the services with `bash tests/run.sh`")


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return _url(PG_ENV)


@pytest.fixture(scope="session")
def tsdb_admin_url() -> str:
    return _url(TSDB_ENV)


def with_database(url: str, name: str) -> str:
    u = urlsplit(url)
    return urlunsplit((u.scheme, u.netloc, f"/{name}", u.query, u.fragment))


@pytest.fixture
def make_database(pg_admin_url: str, tsdb_admin_url: str) -> Iterator[Callable[..., str]]:
    """``make_database(flavor="postgres"|"timescaledb", prefix="hw") -> url`` of a new, empty database."""
    made: list[tuple[str, str, str]] = []

    def make(flavor: str = "postgres", prefix: str = "hw") -> str:
        if flavor not in ("postgres", "timescaledb"):
            raise ValueError(f"flavor {flavor!r}: use 'postgres' or 'timescaledb'")
        admin, env = (pg_admin_url, PG_ENV) if flavor == "postgres" else (tsdb_admin_url, TSDB_ENV)
        name = f"{prefix}_{uuid.uuid4().hex[:8]}".lower()
        with _admin_connect(admin, env) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append((admin, env, name))
        url = with_database(admin, name)
        if flavor == "timescaledb":
            with psycopg.connect(url, autocommit=True) as conn:
                try:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                except psycopg.Error as e:
                    pytest.fail(f"{env}={admin} is not a TimescaleDB server ({e}); run `bash tests/run.sh`")
        return url

    yield make
    for admin, env, name in made:
        with _admin_connect(admin, env) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["postgres", "timescaledb"], ids=["pg", "tsdb"])
def db_url(request: pytest.FixtureRequest, make_database: Callable[..., str]) -> str:
    """A fresh database, once on plain PostgreSQL and once on TimescaleDB."""
    return make_database(request.param, "hwt")


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    url = _url(MQTT_ENV)
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 1883
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        pytest.fail(f"MQTT broker {url} ({MQTT_ENV}) does not answer: {e}\nstart it with `bash tests/run.sh`")
    return url


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix of this test's own, so runs never see each other's messages."""
    return f"t{uuid.uuid4().hex[:8]}/hw/v1"


from tests.service_helpers import stand_ins  # noqa: E402, F401 — a fixture for the end-to-end tests


def private_broker(url: str) -> bool:
    """Whether ``url`` is the broker tests/run.sh starts with the shipped configuration."""
    return (urlsplit(url).port or 1883) != 1883
