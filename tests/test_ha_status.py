"""Cluster status (``hazardwatch status``, ``/api/v1/cluster``) from real instances on real databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from alerting.links import LinkSigner
from hazardwatch.api.app import create_app
from hazardwatch.api.auth import create_token
from hazardwatch.cli import main
from park.db import open_pool
from park.db.cluster import Beacon, cluster_status, database_nodes
from park.db.lease import Elector
from park.model import Park
from park.settings import EnvSettings, load_settings
from park.sitefile import parse_site
from tests.ha_helpers import lease_row, migrated, until
from tests.pg_cluster import multi_host_url, primary_and_replica
from tests.site_helpers import MINIMAL_SITE


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def two_instances(url: str) -> AsyncIterator[tuple[Elector, Elector]]:
    """Instances a (which leads) and b (standing by), each with its lease and its heartbeat row."""
    async with open_pool(url, min_size=1, max_size=4) as pool:
        a, b = (Elector(url, n, ttl=3.0, retry_every=0.1) for n in ("a", "b"))
        beacons = [Beacon(pool, e.instance, role=lambda e=e: (e.role, e.core.term.epoch if e.core.term else None),
                          detail=lambda: {"brokers": {"mqtt://127.0.0.1:1883": {"connected": True}}},
                          http_url=f"http://127.0.0.1:80{i}", every=0.2) for i, e in enumerate((a, b))]
        tasks = [asyncio.create_task(a.run())]
        try:
            await until(lambda: a.leading() is not None, "a leads")
            tasks += [asyncio.create_task(b.run())] + [asyncio.create_task(x.run()) for x in beacons]
            await until(lambda: b.role == "standby" and all(x.beats >= 2 for x in beacons), "b stands by, both beat")
            yield a, b
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def test_status_shows_the_leader_the_standby_and_the_database(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        async with two_instances(db_url), await psycopg.AsyncConnection.connect(db_url) as conn:
            st = await cluster_status(conn)
            assert (st.leader, st.standbys) == ("a", ["b"])
            assert st.lease is not None and st.lease.epoch == 1 and st.lease.held and st.lease.current
            assert st.lease.age_seconds is not None and 0 <= st.lease.age_seconds < 3
            assert [(i.instance, i.role, i.epoch, i.alive) for i in st.instances] == [("a", "leader", 1, True),
                                                                                      ("b", "standby", None, True)]
            assert st.instances[0].detail["brokers"] == {"mqtt://127.0.0.1:1883": {"connected": True}}
            assert st.database.in_recovery is False and st.database.replicas == []
            apps = {c.application: c.count for c in st.database.connections}
            assert apps["hazardwatch-lease a"] == 1 and apps["hazardwatch-lease b"] == 1
            # the leader's lease session goes: b takes over; a's row shows it is no longer leader
            _, _, pid = await lease_row(db_url)
            await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

            async def b_leads() -> bool:
                s = await cluster_status(conn)
                return s.leader == "b" and s.lease is not None and s.lease.epoch >= 2

            await until(b_leads, "status shows b leading")
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            st = await cluster_status(conn)
        # both stopped: their rows say so, and nobody holds the lease
        assert st.leader is None and st.standbys == [] and st.lease is not None and not st.lease.held
        assert {i.instance: (i.role, i.alive) for i in st.instances} == {"a": ("stopped", False),
                                                                         "b": ("stopped", False)}

    run(go())


def test_an_instance_that_stopped_beating_is_not_counted_as_a_standby(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO ha_instances (instance, host, pid, role, started_at, heartbeat_at) VALUES"
                " ('old', 'h1', 1, 'standby', now() - interval '1 hour', now() - interval '5 minutes'),"
                " ('new', 'h2', 2, 'standby', now(), now())")
            st = await cluster_status(conn)
        assert st.standbys == ["new"] and st.leader is None
        assert [(i.instance, i.alive) for i in st.instances] == [("new", True), ("old", False)]

    run(go())


def test_status_command_prints_who_leads_and_exits_by_it(db_url: str, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HAZARDWATCH_DATABASE_URL", db_url)
    run(migrated(db_url))
    assert main(["status"]) == 2  # nobody leads yet
    out = capsys.readouterr().out
    assert "leader   ✗ NONE" in out and "primary" in out

    seen: dict[str, object] = {}

    async def go() -> None:
        async with two_instances(db_url):
            # the command is synchronous (its own event loop): run it in a thread meanwhile
            seen["rc"] = await asyncio.to_thread(main, ["status"])
            seen["text"] = capsys.readouterr().out
            seen["rc_json"] = await asyncio.to_thread(main, ["status", "--json"])
            seen["json"] = capsys.readouterr().out

    run(go())
    assert seen["rc"] == 0 and seen["rc_json"] == 0
    text = str(seen["text"])
    assert "leader   a  epoch 1" in text and "standby  b" in text and "mqtt://127.0.0.1:1883 ✓" in text
    doc = json.loads(str(seen["json"]))
    assert doc["leader"] == "a" and doc["standbys"] == ["b"] and doc["nodes"][0]["role"] == "primary"


def test_status_names_an_instance_whose_synchronous_replica_confirms_nothing(db_url: str) -> None:
    """An instance's heartbeat carries its synchronous-replication guard's view (park.db.syncrep): the
    status shows which instances keep their commits on the primary alone, and only those."""
    from hazardwatch.commands.status import render

    async def go() -> str:
        await migrated(db_url)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO ha_instances (instance, host, pid, role, started_at, heartbeat_at, detail) VALUES"
                " ('a', 'h1', 1, 'leader', now(), now(), '{\"sync_replica_confirming\": false}'),"
                " ('b', 'h2', 2, 'standby', now(), now(), '{\"sync_replica_confirming\": true}')")
            return render(await cluster_status(conn))

    lines = [ln for ln in run(go()).splitlines() if ln.lstrip().startswith("✓ ")]
    [a] = [ln for ln in lines if " a " in ln]
    [b] = [ln for ln in lines if " b " in ln]
    assert "commits on the primary alone" in a and "primary alone" not in b


def test_status_command_says_when_the_database_is_away(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HAZARDWATCH_DATABASE_URL", "postgresql://postgres:s3cret@127.0.0.1:9/none")
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert "not reachable" in err and "127.0.0.1:9" in err and "s3cret" not in err


def test_cluster_route_is_for_the_duty_room_only(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        site = parse_site(MINIMAL_SITE)
        park = Park.from_site(site)
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            duty = await create_token(conn, park, "park", "值班室")
            ent = await create_token(conn, park, "E001", "企业")
            await conn.commit()
        async with two_instances(db_url), open_pool(db_url, min_size=1, max_size=2) as pool:
            app = create_app(park=park, pool=pool, commands=None,  # type: ignore[arg-type]  # no command here
                             settings=load_settings(site, EnvSettings(database_url=db_url)),
                             registry=CollectorRegistry(), readiness=lambda: True, links=LinkSigner(b"k" * 32))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
                r = await http.get("/api/v1/cluster", headers={"Authorization": f"Bearer {duty}"})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["leader"] == "a" and body["standbys"] == ["b"] and body["lease"]["epoch"] == 1
                assert body["database"]["in_recovery"] is False
                r = await http.get("/api/v1/cluster", headers={"Authorization": f"Bearer {ent}"})
                assert r.status_code == 403
                assert (await http.get("/api/v1/cluster")).status_code == 401
                assert "/api/v1/cluster" in app.openapi()["paths"]

    run(go())


@pytest.mark.slow
def test_database_hosts_show_primary_and_replica_and_follow_a_promotion() -> None:
    with primary_and_replica() as (primary, replica):
        url = multi_host_url(primary, replica)
        nodes = run(database_nodes(url))
        assert [(n.port, n.role) for n in nodes] == [(str(primary.port), "primary"), (str(replica.port), "replica")]
        assert nodes[0].detail == "1 replica(s) streaming"
        primary.stop("fast")
        replica.promote()
        nodes = run(database_nodes(url))
        assert [n.role for n in nodes] == ["unreachable", "primary"]
