"""HTTP limits on the running service: bodies refused before being read, failed tokens that never lock
out a valid one, proxy headers ignored from strangers, live streams sharing one listener with a
per-token cap, revoked tokens' streams closed, database outages answered 503."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import psycopg

from hazardwatch.api.auth import revoke_token
from park.clock import FakeClock
from park.errors import Unavailable
from park.sitefile import parse_site
from tests.ingest_helpers import Publisher
from tests.service_helpers import StandIns, running_service, token_for
from tests.test_service_e2e import T0, until

MB64 = 64 * 1024 * 1024


def _raw_request(url: str, head: str, body: bytes, chunks: list[bytes] | None = None) -> bytes:
    """Send a request by hand (so nothing reads the declared body for us) and return the answer."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=15) as s:
        s.sendall(head.encode() + body)
        for c in chunks or []:
            try:
                s.sendall(f"{len(c):x}\r\n".encode() + c + b"\r\n")
            except OSError:  # the server answered and closed: what we want
                break
        out = b""
        while b"\r\n\r\n" not in out:
            data = s.recv(65536)  # blocks until the server answers (or 15 s pass: then the test fails)
            if not data:
                break
            out += data
        return out


def test_64mb_bodies_are_refused_before_being_read(make_database, mqtt_url: str, topic_prefix: str,  # type: ignore[no-untyped-def]
                                                   stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwweb")

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, _client):
            # a declared 64 MB body, of which only 1 KiB is ever sent: the answer comes anyway
            head = ("POST /api/v1/alarms/1/ack HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {MB64}\r\n\r\n")
            ans = await asyncio.to_thread(_raw_request, h.http_url, head, b"{" + b" " * 1023)
            assert ans.startswith(b"HTTP/1.1 413"), ans[:200]
            # the same with a valid token: the limit comes before everything
            tok = (await token_for(h, "park"))["Authorization"]
            head = head.replace("Host: x\r\n", f"Host: x\r\nAuthorization: {tok}\r\n")
            ans = await asyncio.to_thread(_raw_request, h.http_url, head, b"{")
            assert ans.startswith(b"HTTP/1.1 413"), ans[:200]
            # chunked, no length declared: refused once 64 KiB have arrived, the rest never read
            head = ("POST /api/v1/alarms/1/ack HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Authorization: {tok}\r\nTransfer-Encoding: chunked\r\n\r\n")
            ans = await asyncio.to_thread(_raw_request, h.http_url, head, b"", [b" " * 16384] * 4096)
            assert ans.startswith(b"HTTP/1.1 413"), ans[:200]
            # a small body still works
            async with httpx.AsyncClient(base_url=h.http_url) as c:
                r = await c.post("/api/v1/alarms/1/ack", json={"by": "x"}, headers={"Authorization": tok})
                assert r.status_code == 404

    asyncio.run(go())


def test_200_bad_tokens_from_one_address_never_stop_a_valid_token(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                                   topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwweb")

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, _client):
            good = await token_for(h, "park")
            async with httpx.AsyncClient(base_url=h.http_url, timeout=30,
                                         limits=httpx.Limits(max_connections=300)) as c:
                async def bad(i: int) -> int:
                    # a new X-Forwarded-For per request: not believed, the service has no trusted proxy
                    r = await c.get("/api/v1/alarms", headers={"Authorization": f"Bearer hw_guess{i:04d}xxxxxxxx",
                                                               "X-Forwarded-For": f"10.9.{i // 250}.{i % 250}"})
                    return r.status_code

                codes = await asyncio.gather(*(bad(i) for i in range(200)))
                assert set(codes) <= {401, 429}, set(codes)
                assert codes.count(429) >= 150, "failures from one address are limited, whatever the header says"
                ok = await c.get("/api/v1/alarms", headers=good)
                assert ok.status_code == 200, ok.text
                # and the attacker is still refused meanwhile
                again = await c.get("/api/v1/alarms", headers={"Authorization": "Bearer hw_guess9999xxxxxxxx"})
                assert again.status_code == 429 and int(again.headers["Retry-After"]) >= 1

    asyncio.run(go())


def _alarms_stored(db: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM alarms").fetchone()
        assert row is not None
        return int(row[0])


def _db_connections(db: str) -> int:
    """Connections of the API's side: the shared pool and the listeners made from it (application
    name ``hazardwatch``); the leader's own pool and the lease session are named apart."""
    name = urlsplit(db).path.lstrip("/")
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                           " AND application_name = 'hazardwatch'", (name,)).fetchone()
        assert row is not None
        return int(row[0])


def test_200_streams_on_one_token_share_one_listener_and_are_capped(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                                     topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwweb")

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, _client):
            viewer = await token_for(h, "park")
            operator = await token_for(h, "T1")
            before = _db_connections(db)
            async with httpx.AsyncClient(base_url=h.http_url, timeout=30,
                                         limits=httpx.Limits(max_connections=300)) as c:
                opened: list[httpx.Response] = []

                async def open_one() -> int:
                    req = c.build_request("GET", "/api/v1/stream", headers=viewer)
                    r = await c.send(req, stream=True)
                    if r.status_code == 200:
                        opened.append(r)
                    else:
                        await r.aread()
                        await r.aclose()
                    return r.status_code

                codes = await asyncio.gather(*(open_one() for _ in range(200)))
                assert codes.count(200) == 20 and codes.count(429) == 180, (codes.count(200), codes.count(429))
                during = await asyncio.to_thread(_db_connections, db)
                # the streams hold no connection of their own: at most the pool plus the live-stream listener
                # and the command-outcome listener
                assert during <= max(before, 16) + 2, (before, during)
                # another operator's command still goes through, and every stream sees the change
                pub = Publisher(mqtt_url)
                ms = int(T0.timestamp() * 1000)
                pub.publish(f"{topic_prefix}/E1/point/AT-1", json.dumps({"value": 60, "ts": ms}))
                pub.close()
                # stored, not only judged: the API looks the alarm up in the database before the command
                await until(lambda: bool(h.rules.engine.alarms) and _alarms_stored(db) > 0)
                aid = next(iter(h.rules.engine.alarms.values())).alarm_id
                r = await c.post(f"/api/v1/alarms/{aid}/ack", json={"by": "镇值班员"}, headers=operator)
                assert r.status_code == 200, r.text

                async def saw_ack(resp: httpx.Response) -> bool:
                    async for line in resp.aiter_lines():
                        if line.startswith("data:") and '"acked_by": "镇值班员"' in line:
                            return True
                    return False

                seen = await asyncio.wait_for(asyncio.gather(*(saw_ack(r) for r in opened)), 30)
                assert all(seen)
                for r in opened:
                    await r.aclose()
            assert h.ingest is not None

    asyncio.run(go())


def test_a_revoked_tokens_stream_closes_within_5_seconds(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                          topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwweb")

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, _client):
            hdr = await token_for(h, "park")
            async with httpx.AsyncClient(base_url=h.http_url, timeout=30) as c, \
                    c.stream("GET", "/api/v1/stream", headers=hdr) as resp:
                assert resp.status_code == 200
                lines = resp.aiter_lines()
                async for line in lines:
                    if line.startswith("event: hello"):
                        break
                async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
                    cur = await conn.execute("SELECT id FROM api_tokens WHERE name = 'test-park'")
                    row = await cur.fetchone()
                    assert row is not None
                    revoked_at = time.monotonic()
                    assert await revoke_token(conn, int(row[0]))

                async def rest() -> list[str]:
                    return [line async for line in lines]

                tail = await asyncio.wait_for(rest(), 5.0)  # the server ends the stream by itself
                assert "event: closed" in tail, tail
                print(f"revoked token's stream closed after {time.monotonic() - revoked_at:.2f} s")
                assert (await c.get("/api/v1/alarms", headers=hdr)).status_code == 401

    asyncio.run(go())


def test_commands_during_a_database_outage_answer_503_with_retry_after(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                                       topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwweb")

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, client):
            pub = Publisher(mqtt_url)
            pub.publish(f"{topic_prefix}/E1/point/AT-1", json.dumps({"value": 60, "ts": int(T0.timestamp() * 1000)}))
            pub.close()
            await until(lambda: bool(h.rules.engine.alarms))
            aid = next(iter(h.rules.engine.alarms.values())).alarm_id
            hdr = await token_for(h, "park")

            async def away(*_a: object, **_k: object) -> None:  # the rule stage's answer while the database is away
                raise Unavailable("database", "数据库暂时不可用，请稍后重试", retry_after=7.2)

            h.rules.ack = away  # type: ignore[method-assign]
            r = await client.post(f"/api/v1/alarms/{aid}/ack", json={"by": "值班员"}, headers=hdr)
            # through the leader's command dispatcher (any instance's API): answered at once, not at the deadline
            assert r.status_code == 503 and r.headers["Retry-After"] == "5"
            assert "数据库暂时不可用" in r.json()["detail"]

    asyncio.run(go())


def test_metrics_and_openapi_protected_when_configured(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                       topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwweb")
    site = parse_site(stand_ins.text + "http: {metrics_token: scrape-secret-42, ops_from: [10.1.0.0/16]}\n",
                      environ={})

    async def go() -> None:
        async with running_service(site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, client):
            assert (await client.get("/metrics")).status_code == 401
            assert (await client.get("/openapi.json")).status_code == 401
            assert (await client.get("/docs")).status_code == 401
            scrape = {"Authorization": "Bearer scrape-secret-42"}
            m = await client.get("/metrics", headers=scrape)
            assert m.status_code == 200 and "hazardwatch_" in m.text
            assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
            api = await token_for(h, "park")
            assert (await client.get("/metrics", headers=api)).status_code == 401  # an API token is not a scrape token
            assert (await client.get("/openapi.json", headers=api)).status_code == 200
            tok = api["Authorization"][7:]
            page = await client.get(f"/docs?token={tok}")
            assert page.status_code == 200 and f"/openapi.json?token={tok}" in page.text
            assert (await client.get("/healthz")).status_code == 200

    asyncio.run(go())


def test_openapi_open_by_default_on_loopback(make_database, mqtt_url: str, topic_prefix: str,  # type: ignore[no-untyped-def]
                                             stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwweb")

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (_h, client):
            assert (await client.get("/metrics")).status_code == 200
            spec = (await client.get("/openapi.json")).json()
            for path, ops in spec["paths"].items():
                for method, op in ops.items():
                    assert op.get("summary") and op.get("description"), f"{method} {path}: summary and description"

    asyncio.run(go())


def test_metrics_are_written_off_the_event_loop_and_can_be_limited_by_name(  # type: ignore[no-untyped-def]
        make_database, mqtt_url: str, topic_prefix: str, stand_ins: StandIns) -> None:
    """A scrape does not hold the event loop (at national scale writing the text takes a tenth of a
    second): while a collector is still being read, the service answers other requests. ``name[]``
    limits the answer to the metrics named."""
    import threading

    from prometheus_client.core import GaugeMetricFamily

    db = make_database("postgres", "hwweb")
    entered, release = threading.Event(), threading.Event()
    released: list[bool] = []

    class Slow:
        def collect(self):  # type: ignore[no-untyped-def]
            entered.set()
            released.append(release.wait(20))  # a scrape still being written
            yield GaugeMetricFamily("hw_test_slow", "a collector that takes its time", value=1)

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, client):
            limited = await client.get("/metrics", params={"name[]": "hazardwatch_ingest_readings_stored_total"})
            assert limited.status_code == 200
            names = {x.split()[0].split("{")[0] for x in limited.text.splitlines() if x and not x.startswith("#")}
            assert names == {"hazardwatch_ingest_readings_stored_total"}
            h.registry.register(Slow())  # type: ignore[no-untyped-call]
            try:
                scrape = asyncio.create_task(client.get("/metrics"))
                assert await asyncio.to_thread(entered.wait, 20)
                assert (await client.get("/healthz")).status_code == 200  # answered while the scrape waits
                release.set()
                m = await scrape
                assert m.status_code == 200 and "hw_test_slow 1.0" in m.text
                assert released == [True], "the collector was released by the test, not by its own timeout"
            finally:
                release.set()

    asyncio.run(go())
