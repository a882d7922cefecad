"""The rule stage with its store, on real PostgreSQL and TimescaleDB, fed by real ingest over MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from park.clock import FakeClock
from park.db import migrate, open_pool
from park.db.registry import sync_registry
from park.site import EnterpriseState
from park.sitefile import parse_site
from park.types import AlarmEvent, AlarmEventKind, GatewayStatus, ReadingBatch
from rules.service import RulesService
from rules.store import PART_BYTES, load_state, save_state
from tests.ingest_helpers import Publisher, settings_for
from tests.rules_helpers import SITE, T0

Inbox = asyncio.Queue[ReadingBatch | GatewayStatus]


@contextlib.asynccontextmanager
async def rules_running(db: str, clock: FakeClock, inbox: Inbox,
                        outbox: asyncio.Queue[AlarmEvent]) -> AsyncIterator[RulesService]:
    async with open_pool(db, min_size=1, max_size=3) as pool:
        async with pool.connection() as conn:
            await migrate(conn)
            park = await sync_registry(conn, parse_site(SITE, environ={}))
        svc = RulesService(park=park, pool=pool, clock=clock, inbox=inbox, outbox=outbox, registry=CollectorRegistry())
        task = asyncio.create_task(svc.run())
        await asyncio.wait_for(svc.restored.wait(), 10)
        try:
            yield svc
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def rows(db: str, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    async with await psycopg.AsyncConnection.connect(db) as conn:
        cur = await conn.execute(sql)
        return await cur.fetchall()


async def next_event(q: asyncio.Queue[AlarmEvent], kind: AlarmEventKind) -> AlarmEvent:
    while True:
        ev = await asyncio.wait_for(q.get(), 10)
        if ev.kind is kind:
            return ev


def test_hh_over_mqtt_becomes_one_alarm_and_a_restart_changes_nothing(db_url: str, mqtt_url: str,
                                                                      topic_prefix: str) -> None:
    from ingest.service import IngestService

    clock = FakeClock(T0 + timedelta(seconds=30))

    async def go() -> None:
        inbox: Inbox = asyncio.Queue()
        outbox: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        # readings are stamped on the fake clock's fixed day: widen ingest's backfill bound (7 days by
        # default, docs/contract.md §1) so the door does not refuse them as too old once that day is past
        settings = settings_for(mqtt_url, db_url, topic_prefix, backfill="36500d")
        pub = Publisher(mqtt_url)
        ms = int(T0.timestamp() * 1000)

        def send(sec: int, value: float) -> None:
            pub.publish(f"{topic_prefix}/E1/data",
                        json.dumps({"ts": ms + sec * 1000, "points": [{"tag": "LT", "value": value}]}))

        async with rules_running(db_url, clock, inbox, outbox) as rules:
            ingest = IngestService(settings=settings, park=rules.park, pool=rules.pool, sink=inbox,
                                   registry=CollectorRegistry())
            itask = asyncio.create_task(ingest.run())
            await asyncio.wait_for(ingest.subscribed.wait(), 10)
            send(0, 5.0)
            send(10, 9.5)  # crosses HH (9)
            raised = await next_event(outbox, AlarmEventKind.RAISED)
            assert (raised.tag, raised.rule, raised.severity.value) == ("LT", "high", "orange")
            assert raised.alarm_id > 0
            send(10, 9.5)  # the gateway re-sends: nothing new
            await asyncio.sleep(0.5)
        # restart mid-alarm: a fresh rule stage from the database
        async with rules_running(db_url, clock, inbox, outbox) as rules2:
            send(20, 9.6)
            send(25, 9.7)
            await asyncio.sleep(1.0)
            assert list(rules2.engine.alarms) == [f"s:{rules2.park.by_key[('E1', 'LT')].id}:high"]
            send(40, 5.0)
            cleared = await next_event(outbox, AlarmEventKind.CLEARED)
            assert cleared.alarm_id == raised.alarm_id
            itask.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await itask
        pub.close()
        alarms = await rows(db_url, "SELECT id, state, severity, rule FROM alarms")
        assert alarms == [(raised.alarm_id, "cleared_unacked", "orange", "high")]
        events = await rows(db_url, "SELECT kind FROM alarm_events ORDER BY ts")
        assert [e[0] for e in events] == ["raised", "cleared"]

    asyncio.run(go())


def test_commands_persist_and_notify(db_url: str) -> None:
    clock = FakeClock(T0)

    async def go() -> None:
        inbox: Inbox = asyncio.Queue()
        outbox: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener:
            async with rules_running(db_url, clock, inbox, outbox) as rules:
                await listener.execute("LISTEN hazardwatch_alarms")
                lt = rules.park.by_key[("E1", "LT")].id
                await inbox.put(ReadingBatch.from_rows([(lt, T0, 9.5, 0)]))
                raised = await next_event(outbox, AlarmEventKind.RAISED)
                note = await asyncio.wait_for(anext(listener.notifies()), 5)
                assert note.payload == str(raised.alarm_id)
                await rules.shelve(raised.alarm_id, "值班员", "误报核实中", T0 + timedelta(hours=1))
                await rules.ack(raised.alarm_id, "值班员", "已通知现场")
                await rules.resolve(raised.alarm_id, "值班长", cause="液位计漂移", action="校准")
                await rules.set_enterprise_state("E1", EnterpriseState.MAINTENANCE, "值班长")
                await inbox.put(ReadingBatch.from_rows([(lt, T0 + timedelta(seconds=5), 9.8, 0)]))
                await asyncio.sleep(0.3)
        [(state, acked_by, note_, cause, action, shelve_reason)] = await rows(
            db_url, "SELECT state, acked_by, ack_note, cause, action, shelve_reason FROM alarms")
        assert (state, acked_by, note_, cause, action, shelve_reason) == (
            "closed", "值班员", "已通知现场", "液位计漂移", "校准", "误报核实中")
        kinds = [k for (k,) in await rows(db_url, "SELECT kind FROM alarm_events ORDER BY ts, kind")]
        assert sorted(kinds) == sorted(["raised", "shelved", "acked", "resolved"])
        assert await rows(db_url, "SELECT state, state_by FROM units WHERE code = 'E1'") == [("maintenance", "值班长")]

    asyncio.run(go())


def _batch(rows: list[tuple[int, float, float]], arrive: float) -> ReadingBatch:
    """Rows of (sensor id, seconds from T0, value) arriving at T0 + ``arrive`` s."""
    b = ReadingBatch.from_rows([(sid, T0 + timedelta(seconds=s), v, 0) for sid, s, v in rows])
    return ReadingBatch(b.sensor_id, b.ts_us, b.value, b.quality, received_us=int((T0.timestamp() + arrive) * 1e6))


async def _drained(rules: RulesService, inbox: Inbox) -> None:
    """Until the stage has taken and judged everything put in its inbox."""
    for _ in range(500):
        if inbox.empty():
            # the item taken last is judged and stored once the lock is free (generous deadline: a
            # store retrying against a busy shared server says so instead of hanging)
            await asyncio.wait_for(rules._lock.acquire(), 60)
            rules._lock.release()
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the rule stage did not drain its inbox")


def test_each_event_row_records_its_own_moment_and_the_alarm_when_it_was_noticed(db_url: str) -> None:
    clock = FakeClock(T0 + timedelta(hours=1))

    async def go() -> None:
        inbox: Inbox = asyncio.Queue()
        outbox: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        async with rules_running(db_url, clock, inbox, outbox) as rules:
            g1 = rules.park.by_key[("E1", "G1")].id
            # a raise at 39.2 %LEL and an upgrade at 54.6 in one batch, an hour late
            await inbox.put(_batch([(g1, 0, 39.2), (g1, 5, 54.6)], arrive=3600))
            await next_event(outbox, AlarmEventKind.UPGRADED)
        rows_ = await rows(db_url, "SELECT kind, severity, value, limit_value, state, message, ts, noticed_at"
                                   " FROM alarm_events ORDER BY ts")
        assert [r[:5] for r in rows_] == [("raised", "yellow", 39.2, 25, "active_unacked"),
                                          ("upgraded", "orange", 54.6, 50, "active_unacked")]
        assert rows_[0][5] == "G1 一级报警：39.2 %LEL，限值 25.0 %LEL（补传数据，迟到 1 小时）"
        assert [(r[6], r[7]) for r in rows_] == [(T0, clock.now()), (T0 + timedelta(seconds=5), clock.now())]
        [(raised_at, noticed_at, detail)] = await rows(db_url, "SELECT raised_at, noticed_at, detail FROM alarms")
        assert (raised_at, noticed_at, detail["backfilled"], detail["delay_s"]) == (T0, clock.now(), True, 3600)

    asyncio.run(go())


def test_a_restart_mid_ramp_resumes_the_early_warning_from_the_saved_state(db_url: str) -> None:
    from tests.rules_helpers import Driver
    from tests.test_rules_time import PT_RAMP, first_trend

    whole = Driver()
    for s, tag, v in PT_RAMP:
        whole.many([(s, tag, v)])
    half = [r for r in PT_RAMP if r[0] < 930]
    clock = FakeClock(T0)

    async def go() -> AlarmEvent:
        inbox: Inbox = asyncio.Queue()
        outbox: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        async with rules_running(db_url, clock, inbox, outbox) as rules:
            pt = rules.park.by_key[("E1", "PT")].id
            for s, _tag, v in half:
                clock.set(T0 + timedelta(seconds=s))
                await inbox.put(_batch([(pt, s, v)], arrive=s))
            await _drained(rules, inbox)
        # stopped: the learned state was saved on the way out
        [(saved,)] = await rows(db_url, "SELECT count(*) FROM rules_state WHERE name = 'trend'")
        assert saved == 1
        async with rules_running(db_url, clock, inbox, outbox) as rules2:
            for s, _tag, v in PT_RAMP[len(half):]:
                clock.set(T0 + timedelta(seconds=s))
                await inbox.put(_batch([(pt, s, v)], arrive=s))
            await _drained(rules2, inbox)
        while True:
            ev = outbox.get_nowait()
            if ev.kind is AlarmEventKind.RAISED and ev.rule == "trend":
                return ev

    ev = asyncio.run(go())
    assert (ev.ts - T0).total_seconds() == first_trend(whole)


def test_a_snapshot_the_database_refuses_never_blocks_judging(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import rules.service as service_module

    clock = FakeClock(T0)

    async def refuse(*_a: object, **_k: object) -> None:
        raise psycopg.OperationalError("the database is away")  # injected fault

    async def go() -> None:
        inbox: Inbox = asyncio.Queue()
        outbox: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        async with rules_running(db_url, clock, inbox, outbox) as rules:
            monkeypatch.setattr(service_module, "save_state", refuse)
            assert await rules.snapshot() is False
            lt = rules.park.by_key[("E1", "LT")].id
            await inbox.put(_batch([(lt, 0, 9.5)], arrive=0))
            raised = await next_event(outbox, AlarmEventKind.RAISED)
            assert raised.tag == "LT"
            monkeypatch.undo()
            assert await rules.snapshot() is True  # the next cadence saves it

    asyncio.run(go())


def test_a_gateway_clock_from_ingest_is_kept_measured_and_alarmed(db_url: str) -> None:
    from park.types import GatewayClock

    clock = FakeClock(T0)

    async def go() -> None:
        inbox: asyncio.Queue[ReadingBatch | GatewayStatus | GatewayClock] = asyncio.Queue()
        outbox: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        async with rules_running(db_url, clock, inbox, outbox) as rules:  # type: ignore[arg-type]
            await inbox.put(GatewayClock("E2", -600.0, T0))
            ev = await next_event(outbox, AlarmEventKind.RAISED)
            assert (ev.rule, ev.severity.value, ev.enterprise) == ("clock", "blue", "E2")
            assert rules.engine.gateway_clocks["E2"][0] == -600.0
            assert rules.metrics.clock_offset.labels("E2")._value.get() == -600.0
            assert ev.message == "二号化工 数据网关时钟慢 10 分钟（允许 ±2 分钟），请校准网关时间"

    asyncio.run(go())


def test_a_burst_of_thousands_of_stale_alarms_is_stored_in_a_few_statements_and_survives_a_retry(
        db_url: str) -> None:
    """3,000 sensors of 60 gateways go silent together: storing 3,000 raises one statement at a time
    held the rule stage (and every alarm behind it) for seconds. And a transaction that fails and is
    retried with the same transitions still leaves every alarm's row."""
    import numpy as np

    from hazardwatch.benchmarks.rules import site_text
    from park.types import epoch_us
    from rules import store
    from rules.engine import RuleEngine

    site = parse_site(site_text(60, 51), environ={})

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await migrate(conn)
            park = await sync_registry(conn, site)
            await conn.commit()
            engine = RuleEngine(park)
            ids = np.array([s.id for s in park.sensors], np.int32)
            us = epoch_us(T0)
            engine.on_batch(ReadingBatch(ids, np.full(len(ids), us, np.int64), np.ones(len(ids)),
                                         np.zeros(len(ids), np.int8), received_us=us), T0)
            engine.on_tick(T0)
            # ten minutes on, each gateway still sends one sensor; the others are silent
            t1 = T0 + timedelta(minutes=10)
            first = np.array(list({s.enterprise: s.id for s in reversed(park.sensors)}.values()), np.int32)
            u1 = epoch_us(t1)
            engine.on_batch(ReadingBatch(first, np.full(len(first), u1, np.int64), np.ones(len(first)),
                                         np.zeros(len(first), np.int8), received_us=u1), t1)
            out = engine.on_tick(t1)
            stale = [t for t in out if t.alarm.rule == "stale"]
            assert len(stale) >= 2900

            statements = [0]
            real_cursor = conn.cursor

            class Counting:  # a cursor that counts each execute / executemany (one per statement run)
                def __init__(self, cur) -> None:  # type: ignore[no-untyped-def]
                    self._cur = cur

                def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
                    return getattr(self._cur, name)

                async def execute(self, *a, **k):  # type: ignore[no-untyped-def]
                    statements[0] += 1
                    await self._cur.execute(*a, **k)
                    return self

                async def executemany(self, *a, **k):  # type: ignore[no-untyped-def]
                    statements[0] += 1
                    return await self._cur.executemany(*a, **k)

                async def __aenter__(self):  # type: ignore[no-untyped-def]
                    await self._cur.__aenter__()
                    return self

                async def __aexit__(self, *exc):  # type: ignore[no-untyped-def]
                    return await self._cur.__aexit__(*exc)

            conn.cursor = lambda *a, **k: Counting(real_cursor(*a, **k))  # type: ignore[method-assign]
            # first try: the transaction fails after the writes (a lost connection, say)
            with contextlib.suppress(RuntimeError):
                async with conn.transaction():
                    await store.persist(conn, out, engine.bind)
                    raise RuntimeError("the commit never happened")
            assert statements[0] <= 10, f"{statements[0]} statements for {len(out)} transitions"
            # the retry of the same transitions: the alarms already have their ids
            async with conn.transaction():
                await store.persist(conn, out, engine.bind)
            conn.cursor = real_cursor  # type: ignore[method-assign]
            cur = await conn.execute("SELECT count(*) FROM alarms WHERE rule = 'stale'")
            assert (await cur.fetchone())[0] == len(stale)  # type: ignore[index]
            cur = await conn.execute("SELECT count(*) FROM alarm_events e JOIN alarms a ON a.id = e.alarm_id"
                                     " WHERE a.rule = 'stale' AND e.kind = 'raised'")
            assert (await cur.fetchone())[0] == len(stale)  # type: ignore[index]

    asyncio.run(go())


def _malloc_held() -> int:
    """Bytes this process holds from malloc now (glibc's heap in use plus its mmapped chunks)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        pytest.skip("needs glibc ≥ 2.33 (mallinfo2) to see what malloc holds")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    mallinfo2.restype = MallInfo2
    m = mallinfo2()
    return int(m.uordblks + m.hblkhd)


def test_the_learned_state_is_kept_in_small_rows_and_comes_back_whole(db_url: str) -> None:
    # a snapshot of megabytes in one row made libpq keep a buffer that large on every pool connection
    big, small = os.urandom(3 * PART_BYTES + 5), b"\x93NUMPY"

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await migrate(conn)
            async with conn.transaction():
                await save_state(conn, {"trend": big, "engine": small, "empty": b""}, T0)
            cur = await conn.execute("SELECT count(*), max(octet_length(data)) FROM rules_state")
            assert await cur.fetchone() == (6, PART_BYTES)  # trend in four rows, engine and empty in one each
            assert await load_state(conn) == {"trend": big, "engine": small, "empty": b""}
            async with conn.transaction():  # a smaller snapshot leaves no part of the larger one behind
                await save_state(conn, {"trend": small}, T0 + timedelta(minutes=1))
            assert await load_state(conn) == {"trend": small, "engine": small, "empty": b""}

    asyncio.run(go())


def test_snapshots_saved_on_many_connections_leave_no_snapshot_sized_buffer_on_each(db_url: str) -> None:
    blob = os.urandom(8 * 2**20)  # a large park's learned state

    async def go() -> int:
        # four connections kept open, as a pool keeps them, each saving one minute's snapshot
        conns = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(4)]
        try:
            await migrate(conns[0])
            for c in conns:
                await c.execute("SELECT 1")
            gc.collect()
            before = _malloc_held()
            for k, c in enumerate(conns):
                async with c.transaction():
                    await save_state(c, {"trend": blob}, T0 + timedelta(minutes=k))
            gc.collect()
            return _malloc_held() - before
        finally:
            for c in conns:
                await c.close()

    held = asyncio.run(go())
    assert held < 8 * 2**20, f"{held / 2**20:.0f} MiB still held after four snapshots of 8 MiB"
