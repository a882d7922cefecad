"""Database failover under the whole service: ``run_service`` in-process on a libpq multi-host URL
(``host=primary,replica … target_session_attrs=read-write``) over a private primary and streaming
replica (plain PostgreSQL), the real test broker, local SMS gateway and WeCom robot stand-ins.

Readings are published steadily; the primary is stopped ``immediate`` (as good as a crash), an HH
gas reading is published during the switch — its SMS goes out from the local journal and the
gateway is slow to answer, so it is still in flight when the replica is promoted and the leader's
stages restart on a new term — the replica is promoted. Then: the service never
exited and no stage was restarted by its supervisor; every stage — ingest's writers, the rules'
store, alerting's outbox, the leadership lease, the API and its LISTEN connections — is connected
to the new primary and working, by itself; the HH alarm reached each of its recipients exactly
once; every reading published is stored exactly once on the new primary.

Replication is asynchronous by default: a commit the old primary acknowledged but had not sent
to the replica is lost with it, and ingest acknowledges readings to the broker after their commit,
so they would be gone for good. The primary here runs with ``synchronous_standby_names = '*'``
(``synchronous_commit = on``), as the operations guide recommends: an acknowledged commit is on
the replica. Without it the last assertion may fail, and rightly so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from hazardwatch.service import ServiceHandle, run_service
from ingest.service import IngestService, writers_pool
from park.clock import SystemClock
from park.settings import EnvSettings, load_settings
from park.site import Site
from tests.ha_helpers import until
from tests.ingest_helpers import Publisher
from tests.pg_cluster import PgNode, free_port, multi_host_url, primary_and_replica, synchronous
from tests.service_helpers import StandIns, launched, service_settings, token_for

PORTS = (19200, 19299)  # private servers of this test (the primary, the replica, the service's API)
INSTANCE = "hdbfail-a"
ENTERPRISE = "13800000003"  # AT-1's enterprise contact (tests.service_helpers.site_text)


def rows(node: PgNode, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(node.url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, args).fetchall()


def stored_ts(node: PgNode, tag: str) -> list[datetime]:
    return [r[0] for r in rows(node, "SELECT r.ts FROM readings r JOIN sensors s ON s.id = r.sensor_id"
                                     " WHERE s.tag = %s ORDER BY r.ts", (tag,))]


def lease_on(node: PgNode) -> tuple[int, str | None]:
    try:
        got = rows(node, "SELECT epoch, holder FROM ha_lease WHERE name = 'leader'")
    except psycopg.Error:
        return 0, None
    return (int(got[0][0]), got[0][1]) if got else (0, None)


def sessions(node: PgNode) -> list[tuple[str, str]]:
    """(application_name, last query) of every client session of the node's database."""
    return [(str(a), str(q)) for a, q in rows(
        node, "SELECT application_name, query FROM pg_stat_activity WHERE datname = current_database()"
              " AND backend_type = 'client backend' AND pid <> pg_backend_pid()")]


class Steady:
    """A gateway publishing one reading of ``tag`` every ``every`` seconds at QoS 1, from a thread.

    ``published`` holds the timestamp (ms) of each reading the broker acknowledged."""

    def __init__(self, mqtt_url: str, prefix: str, enterprise: str, tag: str, every: float = 0.05) -> None:
        self.pub = Publisher(mqtt_url)
        self.topic, self.tag, self.every = f"{prefix}/{enterprise}/data", tag, every
        self.published: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-gateway", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = 0
        while not self._stop.is_set():
            ts = max(last + 1, int(time.time() * 1000))
            self.pub.publish(self.topic, json.dumps({"ts": ts, "points": [{"tag": self.tag, "value": 1.0}]}))
            self.published.append(ts)
            last = ts
            self._stop.wait(self.every)  # the pace of a gateway, not a wait for anything

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the publisher hangs"
        return list(self.published)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.pub.close()


@contextlib.asynccontextmanager
async def service(site: Site, db_url: str, mqtt_url: str, prefix: str
                  ) -> AsyncIterator[tuple[ServiceHandle, httpx.AsyncClient, asyncio.Task[None]]]:
    """The whole service in this process on the real clock, one instance with a 2 s lease."""
    data_dir = tempfile.mkdtemp(prefix="hdbfail-data-")
    settings = service_settings(site, db_url, mqtt_url, prefix, data_dir, client="hdbfail",
                                http_addr=f"127.0.0.1:{free_port(*PORTS)}", instance=INSTANCE, lease_ttl="2s",
                                sync_commit_wait="1s")
    try:
        async with launched(lambda on_ready: run_service(settings, site, clock=SystemClock(),
                                                         registry=CollectorRegistry(), on_ready=on_ready),
                            within=60) as (handle, task), \
                httpx.AsyncClient(base_url=handle.http_url, timeout=10) as client:
            await until(lambda: _status(client, "/healthz", 200), "the API answers")
            yield handle, client, task
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _ready_and_live(client: httpx.AsyncClient) -> bool:
    r = await client.get("/readyz")
    return r.status_code == 200 and r.json()["live_stream"] is True


async def _status(client: httpx.AsyncClient, path: str, want: int) -> bool:
    try:
        return (await client.get(path)).status_code == want
    except httpx.TransportError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_whole_service_follows_a_database_failover_by_itself(
        mqtt_url: str, topic_prefix: str, stand_ins: StandIns, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    sms, robot = stand_ins.sms, stand_ins.robot
    first = free_port(*PORTS)  # two different ports: neither is bound until the servers start
    with primary_and_replica(ports=(first, free_port(first + 1, PORTS[1]))) as (primary, replica):
        synchronous(primary)  # an acknowledged commit is on the replica (see the module docstring)
        url = multi_host_url(primary, replica)
        figures: dict[str, float] = {}

        async def go() -> list[int]:
            async with service(stand_ins.site, url, mqtt_url, topic_prefix) as (h, client, task):
                lead = h.leadership
                assert lead is not None
                headers = await token_for(h, "E1")  # a board's token, made before the failover
                gw = Steady(mqtt_url, topic_prefix, "E2", "X")
                try:
                    await until(lambda: len(stored_ts(primary, "X")) >= 40, "readings stored on the primary", 60)
                    epoch0, holder0 = lease_on(primary)
                    assert holder0 == INSTANCE and lead.role == "leader"

                    await asyncio.to_thread(primary.stop, "immediate")
                    stopped = time.monotonic()
                    # during the switch: an HH combustible-gas reading (orange), the enterprise told by SMS and
                    # robot. The SMS gateway is slow to answer: the message is in flight, sent from the local
                    # journal, when the database comes back and the leader's stages restart on a new term
                    sms.hold.clear()
                    await asyncio.to_thread(gw.pub.publish, f"{topic_prefix}/E1/data", json.dumps(
                        {"ts": int(time.time() * 1000), "points": [{"tag": "AT-1", "value": 60}]}))
                    await until(lambda: sms.held >= 1, "the HH alarm's SMS in flight during the outage")
                    figures["hh_to_sms_request_s"] = time.monotonic() - stopped
                    # the outage seen by every stage before the promotion: the lease, ingest's writers, the
                    # alarm path (alarms and messages in the local journal)
                    await until(lambda: lead.elector.role == "offline" and not h.gate.up
                                and not h.health.report().get("ingest.database", {"ok": True})["ok"],
                                f"the outage seen: {lead.elector.role}, {h.health.report()}")
                    # ... and lasting, as a failover manager's seconds do: the lease session has failed to
                    # reconnect five times (capped back-off, a few seconds), the shared pool several times
                    await until(lambda: lead.elector._failures >= 5
                                and h.pool.get_stats().get("connections_errors", 0) >= 3,
                                "reconnect attempts fail during the outage", 60)
                    assert not task.done()
                    await asyncio.to_thread(replica.promote)
                    promoted = time.monotonic()
                    figures["outage_s"] = promoted - stopped

                    # the leadership lease: taken again on the new primary, a new term (the last term's
                    # stages stopped first: the SMS in flight was cut off)
                    await until(lambda: lease_on(replica)[0] > epoch0 and lease_on(replica)[1] == INSTANCE
                                and lead.role == "leader", "the lease taken on the new primary", 90)
                    figures["lease_s"] = time.monotonic() - promoted
                    sms.hold.set()  # the gateway answers at last (to nobody: the sender is gone)
                    # ingest's writers: readings published after the promotion stored there
                    after = len(gw.published) + 1
                    await until(lambda: len(gw.published) > after and len(stored_ts(replica, "X")) > 0
                                and max(stored_ts(replica, "X")).timestamp() * 1000 >= gw.published[after],
                                "readings stored on the new primary", 90)
                    figures["ingest_s"] = time.monotonic() - promoted
                    # rules and alerting: the alarm stored there, the enterprise told
                    await until(lambda: bool(rows(replica, "SELECT 1 FROM alarms WHERE tag = 'AT-1'")),
                                "the HH alarm stored on the new primary", 90)
                    await until(lambda: any(json.loads(r["body"])["phone"] == ENTERPRISE for r in sms.ok()),
                                "the enterprise's SMS", 90)
                    await until(lambda: bool(rows(replica, "SELECT 1 FROM outbox WHERE channel = 'sms' AND"
                                                           " status = 'sent'"))
                                and not rows(replica, "SELECT 1 FROM outbox WHERE status NOT IN ('sent', 'cancelled')"
                                                      " AND due_at <= now()"),
                                "every message recorded as sent on the new primary", 90)
                    # the API: its pool, an operator command through the leader (LISTEN both ways)
                    await until(lambda: _ready_and_live(client), "/readyz 200, the boards' live feed connected", 90)
                    r = await client.get("/api/v1/alarms", headers=headers)
                    assert r.status_code == 200, r.text
                    [aid] = [a["id"] for a in r.json() if a["tag"] == "AT-1"]
                    r = await client.post(f"/api/v1/alarms/{aid}/ack", json={"by": "张工"}, headers=headers)
                    assert r.status_code == 200, r.text
                    assert rows(replica, "SELECT acked_by FROM alarms WHERE id = %s", (aid,)) == [("张工",)]
                    # every connection of the service is on the new primary, each LISTEN there too
                    want_apps = {"hazardwatch", "hazardwatch-leader", "hazardwatch-ingest",
                                 f"hazardwatch-lease {INSTANCE}"}
                    want_listen = {"LISTEN hw_commands", "LISTEN hw_command_done", "LISTEN hazardwatch_tokens"}
                    await until(lambda: want_apps <= {a for a, _ in sessions(replica)}
                                and want_listen <= {q for _, q in sessions(replica)},
                                f"every stage's sessions on the new primary: {sessions(replica)}", 90)
                    await until(lambda: h.health.all_ok, f"every stage well: {h.health.report()}", 90)
                finally:  # in threads: the service shares this event loop (a blocked loop is a paused leader)
                    published = await asyncio.to_thread(gw.stop)
                    await asyncio.to_thread(gw.close)
                # every reading the broker took is stored once (those in flight at the stop redelivered)
                await until(lambda: len(stored_ts(replica, "X")) >= len(published), "every reading stored", 90)
                assert not task.done(), "the service ended"
                restarts = {k: v["restarts"] for k, v in h.health.report().items() if v["restarts"]}
                assert restarts == {}, f"stages restarted by the supervisor: {restarts}"
                return published

        published = asyncio.run(go())
        print(f"figures: {figures}; readings published {len(published)}")
        assert not replica.in_recovery()
        got = stored_ts(replica, "X")
        want = [datetime.fromtimestamp(ms / 1000, UTC) for ms in published]
        assert len(got) == len(set(got)), "a reading stored twice"
        assert sorted(got) == sorted(want), (f"lost: {sorted(set(want) - set(got))[:5]}, "
                                             f"never published: {sorted(set(got) - set(want))[:5]}")
        assert len(stored_ts(replica, "AT-1")) == 1
        assert len(rows(replica, "SELECT 1 FROM alarms WHERE tag = 'AT-1'")) == 1
        # the HH alarm: each recipient told exactly once. An attempt the slow gateway did not answer in time
        # is retried, and the one cut off in flight goes out again from the new term, all with the same
        # idempotency key, which the gateway drops (the contract): one id, delivered once
        delivered = [json.loads(r["body"])["phone"] for r in sms.ok()]
        assert delivered == [ENTERPRISE], delivered
        ids = {json.loads(r["body"])["id"] for r in sms.requests}
        assert len(ids) == 1, ids
        print(f"SMS requests {len(sms.requests)}, repeats dropped by the gateway {len(sms.duplicates())}")
        assert len(robot.requests) == 1 and robot.ok(), robot.requests
        assert rows(replica, "SELECT count(*) FROM (SELECT idempotency_key FROM notifications WHERE outcome = 'sent'"
                             " GROUP BY 1 HAVING count(*) > 1) d") == [(0,)], "an attempt recorded twice"
        failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert failed == [], failed


@contextlib.contextmanager
def vanished_host() -> Iterator[int]:
    """A port that accepts connections and never answers: a primary whose machine vanished (no refusal)."""
    srv = socket.create_server(("127.0.0.1", free_port(*PORTS)))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        t.join(5)
        for s in [*held, srv]:
            s.close()


def test_ingest_writers_skip_a_first_host_that_vanished(make_database) -> None:  # type: ignore[no-untyped-def]
    """The writers' connections take the shared pool's connect defaults: a first host that never
    answers costs ``connect_timeout``, then the next host of the URL is used (without it, forever)."""
    u = urlsplit(make_database("postgres", "hdbfail"))
    with vanished_host() as port:
        url = f"postgresql://{u.username}@127.0.0.1:{port},{u.hostname}:{u.port}{u.path}?target_session_attrs=read-write"
        pool = writers_pool(url, 1)
        pool.open(wait=False)
        try:
            t0 = time.monotonic()
            with pool.connection(timeout=60) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            took = time.monotonic() - t0
        finally:
            pool.close(5)
    assert took < 30, took


def test_ingest_built_for_a_new_term_clears_the_degraded_report_it_inherits(make_database) -> None:  # type: ignore[no-untyped-def]
    """After a failover the next term's ingest is a new object on the same ``Health``: the report its
    predecessor left (writes failing) must be cleared by its first good write, or /readyz stays 503."""
    from park.health import Health
    from park.sitefile import parse_site
    from tests.ha_helpers import registered
    from tests.test_ha_fencing import SITE

    url = make_database("postgres", "hdbfail")
    site = parse_site(SITE, environ={})

    async def go() -> None:
        park = await registered(url, site)
        settings = load_settings(site, EnvSettings(database_url=url, mqtt_client_id="hdbfail-x"))
        health = Health()
        health.degraded("ingest.database", "writing readings fails: OperationalError")  # the last term's
        svc = IngestService(settings=settings, park=park, pool=None, sink=None,  # type: ignore[arg-type]
                            registry=CollectorRegistry(), health=health)
        pool = writers_pool(url, 1)
        pool.open()
        svc._writers_pool = pool
        try:
            await svc._commit([])  # one good write (nothing in it)
        finally:
            pool.close()
        assert health.all_ok, health.report()

    asyncio.run(go())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_service_goes_on_while_the_only_synchronous_replica_is_down(
        mqtt_url: str, topic_prefix: str, stand_ins: StandIns) -> None:
    """With ``synchronous_standby_names`` set and its only replica down, every commit on the primary
    waits for it, without an error. The lease's renewals do not (its session commits locally): the
    leader keeps its term. The stages' commits are kept on the primary alone by the synchronous-
    replication guard (``park.db.syncrep``, ``HAZARDWATCH_SYNC_COMMIT_WAIT`` 1 s here): readings are
    stored, an HH reading is told by SMS, and ``/readyz`` says why it is 503 — until the replica is
    back. Without the guard no reading is stored and no SMS goes out while ``/readyz`` stays 200."""
    sms = stand_ins.sms
    first = free_port(*PORTS)
    with primary_and_replica(ports=(first, free_port(first + 1, PORTS[1]))) as (primary, replica):
        synchronous(primary)

        async def go() -> None:
            async with service(stand_ins.site, primary.url, mqtt_url, topic_prefix) as (h, client, task):
                lead = h.leadership
                assert lead is not None and lead.role == "leader"
                await until(lambda: _ready_and_live(client), "/readyz 200 with the replica up")
                await asyncio.to_thread(replica.stop, "immediate")
                before, steps = lead.elector.renewals, lead.elector.takeovers
                gw = Steady(mqtt_url, topic_prefix, "E2", "X")
                try:
                    await asyncio.to_thread(gw.pub.publish, f"{topic_prefix}/E1/data", json.dumps(
                        {"ts": int(time.time() * 1000), "points": [{"tag": "AT-1", "value": 60}]}))
                    told = await until(lambda: any(json.loads(r["body"])["phone"] == ENTERPRISE for r in sms.ok()),
                                       "the HH alarm's SMS with the replica down", 60)
                    await until(lambda: len(stored_ts(primary, "X")) >= 20, "readings stored with the replica down",
                                60)
                    r = await client.get("/readyz")
                    assert r.status_code == 503, r.text
                    st = r.json()["stages"]["database.replica"]
                    assert not st["ok"] and "primary alone" in st["reason"], st
                    await until(lambda: lead.elector.renewals >= before + 6 or lead.elector.core.term is None,
                                "six renewals with the replica down", 60)
                    assert lead.elector.core.term is not None and lead.elector.takeovers == steps, \
                        f"the leader stepped down: {lead.elector.last_step_down}"
                    assert lead.role == "leader" and not task.done()

                    # the replica back: commits confirmed again, /readyz 200, readings still stored
                    await asyncio.to_thread(replica.start)
                    back = await until(lambda: _ready_and_live(client), f"/readyz 200 again: {h.health.report()}", 90)
                    print(f"figures: HH reading → SMS request with the replica down {told:.2f} s; /readyz 200 "
                          f"{back:.2f} s after the replica's start returned")
                    n = len(stored_ts(primary, "X"))
                    await until(lambda: len(stored_ts(primary, "X")) > n + 5,
                                "readings stored after the replica is back")
                finally:
                    await asyncio.to_thread(gw.close)
                restarts = {k: v["restarts"] for k, v in h.health.report().items() if v["restarts"]}
                assert restarts == {}, f"stages restarted by the supervisor: {restarts}"

        asyncio.run(go())
