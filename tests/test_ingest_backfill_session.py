"""History in a session of its own (issue 16): ``{prefix}/{ent}/backfill`` (docs/contract.md §1).

A gateway re-sending hours of history must not hold up a live alarm: with one broker session the live
reading waits behind the whole backlog in the broker's per-session order. These tests run the real
ingest stage against the real broker and database:

- a backlog of thousands of messages waits on ``…/backfill`` before ingest starts; one live HH reading
  then reaches the rules ahead of nearly all of it, its alarm is raised while most of the backlog is
  still unstored (counted, never timed), and in the end every backlog reading is stored exactly once;
- a history message is acknowledged only after the commit holding its readings: with a key of the first
  one held by another transaction, later history commits but nothing is acknowledged; ingest
  restarted mid-drain, the broker redelivers it all, and each reading is stored once;
- the live session (still on ``{prefix}/#``) acknowledges its copy of a ``…/backfill`` message without
  decoding it, and still rejects a topic outside the contract's table with ``bad_topic``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry

from ingest.service import BACKFILL_AHEAD, BACKFILL_CHUNK
from ingest.transport import Message
from park.clock import SystemClock
from park.db import open_pool
from park.settings import Settings
from park.types import AlarmEvent, AlarmEventKind, ReadingBatch
from rules.service import RulesService
from tests.ingest_helpers import TAGS, Publisher, prepare, running_ingest, settings_for, until

BACKLOG = 5_000  # messages of history, 20 readings each
POINTS = len(TAGS)


def history(prefix: str, n: int, t0_ms: int, spike_at: int | None = None) -> list[tuple[str, bytes | str]]:
    """``n`` gateway batches of E1's 20 gas detectors, a second apart from ``t0_ms``; the value is the
    message's number (in %LEL: far below the limits) except a spike of AT-005 at message ``spike_at``."""
    out: list[tuple[str, bytes | str]] = []
    for i in range(n):
        pts = [{"tag": t, "value": 60.0 if i == spike_at and t == "AT-005" else round(i / n, 4)} for t in TAGS]
        out.append((f"{prefix}/E1/backfill", json.dumps({"ts": t0_ms + i * 1000, "seq": i, "points": pts})))
    return out


async def count(db: str, sql: str = "SELECT count(*) FROM readings") -> int:
    async with await psycopg.AsyncConnection.connect(db) as conn:
        cur = await conn.execute(sql)
        return (await cur.fetchone())[0]  # type: ignore[index]


async def leave_sessions(settings: Settings) -> None:
    """Run ingest once and stop it: the broker keeps both its persistent sessions, subscribed, and
    queues what gateways publish meanwhile (a hazardwatch that ran before and is restarting)."""
    async with running_ingest(settings):
        pass


class WitnessQueue(asyncio.Queue[Any]):
    """The rules' outbox, noting what ``observe`` says at the moment each alarm event is handed over."""

    def __init__(self, observe: Callable[[], dict[str, int]]) -> None:
        super().__init__()
        self.observe = observe
        self.seen: list[tuple[AlarmEvent, dict[str, int]]] = []

    def put_nowait(self, item: Any) -> None:
        self.seen.append((item, self.observe()))
        super().put_nowait(item)


def test_a_live_alarm_overtakes_a_backlog_of_history_which_is_stored_exactly_once(
        make_database: Callable[..., str], mqtt_url: str) -> None:
    db = make_database("postgres", "hbackfill")
    prefix = f"hbackfill{uuid.uuid4().hex[:6]}/hw/v1"
    client_id = f"hbackfill-{uuid.uuid4().hex[:8]}"
    settings = settings_for(mqtt_url, db, prefix, client_id)
    t0_ms = int(time.time() * 1000) - 3 * 3600 * 1000  # three hours of outage ago
    spike = BACKLOG // 2

    async def go() -> None:
        park = await prepare(db)
        await leave_sessions(settings)
        pub = Publisher(mqtt_url)
        try:
            await asyncio.to_thread(pub.publish_many, history(prefix, BACKLOG, t0_ms, spike))
            inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)  # the service's READINGS_QUEUE
            # ready although the history session's SUBACK waits in the socket behind the backlog the broker
            # delivers first, which fills that session's window (the rules are held): it was resumed
            async with running_ingest(settings, inbox) as ingest, \
                    open_pool(db, min_size=1, max_size=3) as pool:
                lt = park.by_key[("E2", "LT-1")].id
                # the rules are not taking anything yet: what reaches their inbox, in which order, is
                # ingest's doing alone
                await until(lambda: inbox.qsize() >= 1, what="history reaching the rules' inbox")
                pub.publish(f"{prefix}/E2/data", json.dumps({"ts": int(time.time() * 1000),
                                                             "points": [{"tag": "LT-1", "value": 9.5}]}))

                def live_position() -> int | None:
                    for k, item in enumerate(list(inbox._queue)):  # type: ignore[attr-defined]
                        if isinstance(item, ReadingBatch) and (item.sensor_id == lt).any():
                            return k
                    return None

                await until(lambda: live_position() is not None, what="the live reading reaching the rules' inbox")
                pos = live_position()
                assert pos is not None
                ahead = list(inbox._queue)[: pos + 1]  # type: ignore[attr-defined]
                history_ahead = sum(len(b) for b in ahead if isinstance(b, ReadingBatch)) - 1
                # the live reading waits behind at most the few small chunks of history the rules' inbox
                # admits, not behind the backlog (with one session: all 100,000 readings of it)
                assert history_ahead <= (BACKFILL_AHEAD + 1) * BACKFILL_CHUNK * POINTS, history_ahead
                assert history_ahead < BACKLOG * POINTS // 10

                def observe() -> dict[str, int]:
                    return {"stored": int(ingest.metrics.stored._value.get()),
                            "judged": int(rules.metrics.readings._value.get())}

                outbox = WitnessQueue(observe)
                rules = RulesService(park=park, pool=pool, clock=SystemClock(), inbox=inbox, outbox=outbox,
                                     registry=CollectorRegistry())
                rtask = asyncio.create_task(rules.run())
                try:
                    await until(lambda: any(e.tag == "LT-1" and e.kind is AlarmEventKind.RAISED
                                            for e, _ in outbox.seen), what="the live alarm")
                    [(live_alarm, at_raise)] = [(e, o) for e, o in outbox.seen
                                                if e.tag == "LT-1" and e.kind is AlarmEventKind.RAISED]
                    assert not live_alarm.detail.get("backfilled")
                    # raised while most of the backlog is neither judged nor stored
                    assert at_raise["judged"] <= history_ahead + 1 + 2 * BACKFILL_CHUNK * POINTS, at_raise
                    assert at_raise["stored"] < BACKLOG * POINTS // 2, at_raise
                    # the backlog then drains: every reading stored exactly once, and judged like live data
                    # (the spike in the middle of it raises its own alarm, marked as raised from history)
                    total = BACKLOG * POINTS + 1
                    await until(lambda: ingest.metrics.stored._value.get() >= total, within=120,
                                what="the whole backlog stored")
                    await until(lambda: any(e.tag == "AT-005" and e.kind is AlarmEventKind.RAISED
                                            for e, _ in outbox.seen), what="the alarm from history")
                finally:
                    rtask.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await rtask
                [history_alarm] = [e for e, _ in outbox.seen if e.tag == "AT-005" and e.kind is AlarmEventKind.RAISED]
                assert history_alarm.detail.get("backfilled") is True
                assert history_alarm.ts.timestamp() * 1000 == t0_ms + spike * 1000
                await until(lambda: ingest.backfill._held == 0, what="every history message acknowledged")
            assert await count(db) == total
            assert await count(db, "SELECT count(*) FROM (SELECT DISTINCT sensor_id, ts FROM readings) d") == total
        finally:
            pub.close()

    asyncio.run(go())


def test_history_is_acknowledged_only_after_its_commit_and_a_restart_mid_drain_loses_and_doubles_nothing(
        make_database: Callable[..., str], mqtt_url: str) -> None:
    """Timeline: one key of the first history message is held by another open transaction. Ingest
    drains the rest: later history commits meanwhile, yet nothing is acknowledged (the first message's
    commit is pending, and acknowledgements follow arrival order). Ingest is stopped mid-drain, the
    held key is released (the stuck write then commits with nobody left to acknowledge it); started
    again, the broker redelivers every message and each reading ends up stored once."""
    n = 2_000
    db = make_database("postgres", "hbackfill")
    prefix = f"hbackfill{uuid.uuid4().hex[:6]}/hw/v1"
    client_id = f"hbackfill-{uuid.uuid4().hex[:8]}"
    settings = settings_for(mqtt_url, db, prefix, client_id)
    t0_ms = (int(time.time()) // 3600 * 3600 - 3 * 3600) * 1000  # on the hour: one TimescaleDB chunk holds it
    settled: list[int] = []
    stored_then = 0

    async def go() -> None:
        nonlocal stored_then
        await prepare(db)
        await leave_sessions(settings)
        pub = Publisher(mqtt_url)
        try:
            await asyncio.to_thread(pub.publish_many, history(prefix, n, t0_ms))
        finally:
            pub.close()
        async with await psycopg.AsyncConnection.connect(db) as blocker:
            cur = await blocker.execute("SELECT id FROM sensors WHERE tag = %s", (TAGS[0],))
            sid = (await cur.fetchone())[0]  # type: ignore[index]
            await blocker.execute("INSERT INTO readings (ts, sensor_id, value, quality) "
                                  "VALUES (to_timestamp(%s), %s, 0, 0)", (t0_ms // 1000, sid))
            async with running_ingest(settings) as ingest:
                real_settle = ingest.backfill.settle

                def settle(msgs: Iterable[Message]) -> int:  # observe, then do the real thing
                    msgs = list(msgs)
                    settled.extend(json.loads(m[1])["seq"] for m in msgs)
                    return real_settle(msgs)

                ingest.backfill.settle = settle  # type: ignore[method-assign, assignment]
                # later history commits around the held key …
                await until(lambda: ingest.metrics.stored._value.get() >= n // 4 * len(TAGS),
                            within=60, what="history after the held key committed")
                stored_then = await count(db)
                assert stored_then >= n // 4 * len(TAGS)
                assert settled == []  # … but none of it is acknowledged: ingest is stopped mid-drain
            await blocker.rollback()  # the stuck write may now commit, unacknowledged: redelivered below
        async with running_ingest(settings) as ingest:
            await until(lambda: ingest.metrics.stored._value.get() + ingest.metrics.duplicates._value.get()
                        >= n * len(TAGS), within=60, what="the redelivered history")
            await until(lambda: ingest.backfill._held == 0, what="the redelivered history acknowledged")
            redelivered = int(ingest.metrics.messages._value.get())
            duplicates = int(ingest.metrics.duplicates._value.get())
        assert redelivered >= n  # every unacknowledged message came back …
        assert duplicates >= stored_then  # … those committed before the stop included (stored once)
        assert await count(db) == n * len(TAGS)
        assert await count(db, "SELECT count(*) FROM (SELECT DISTINCT sensor_id, ts FROM readings) d") == n * len(TAGS)

    asyncio.run(go())


def test_the_live_sessions_copy_of_history_is_acknowledged_undecoded_and_other_topics_still_rejected(
        make_database: Callable[..., str], mqtt_url: str) -> None:
    """The live session subscribes to ``{prefix}/#`` (contract §1: a topic outside the table is rejected with
    a reason), so it receives every ``…/backfill`` message too. Its copy is acknowledged without being
    decoded or stored — the history session's copy is the one decoded, stored and judged — while
    ``…/E1/foo`` (a vendor's typo of ``data``) is still rejected with ``bad_topic``. Ingest restarted, the
    broker redelivers nothing on either session: both copies were acknowledged."""
    db = make_database("postgres", "hbackfill")
    prefix = f"hbf2{uuid.uuid4().hex[:6]}/hw/v1"
    client_id = f"hbf2-{uuid.uuid4().hex[:8]}"
    settings = settings_for(mqtt_url, db, prefix, client_id)
    now_ms = int(time.time() * 1000)
    backfill_topic = f"{prefix}/E1/backfill"
    decoded: list[str] = []
    settled: dict[str, list[str]] = {"live": [], "history": []}

    def observe(ingest: Any) -> None:  # note what is decoded and what each session acknowledges
        real_decode = ingest.decoder.decode

        def decode(out: Any, topic: str, *rest: Any) -> Any:
            decoded.append(topic)
            return real_decode(out, topic, *rest)

        ingest.decoder.decode = decode
        for name, t in (("live", ingest.transport), ("history", ingest.backfill)):
            def settle(msgs: Iterable[Message], real: Callable[..., int] = t.settle, name: str = name) -> int:
                msgs = list(msgs)
                settled[name].extend(m[0] for m in msgs)
                return real(msgs)

            t.settle = settle  # type: ignore[method-assign, assignment]

    async def go() -> None:
        await prepare(db)
        async with running_ingest(settings, wait=False) as ingest:
            observe(ingest)  # before the decode loop starts (it keeps its own reference to decode)
            await asyncio.wait_for(ingest.subscribed.wait(), 20)
            pub = Publisher(mqtt_url)
            try:
                pub.publish_many([history(prefix, 1, now_ms - 3600_000)[0]])
                # alone on the live session: a chunk with nothing to store, settled at once
                await until(lambda: settled["live"] == [backfill_topic] and settled["history"] == [backfill_topic],
                            what="the history message acknowledged on both sessions")
                pub.publish_many([(f"{prefix}/E1/foo", json.dumps({"ts": now_ms, "points": [{"tag": "AT-000",
                                                                                              "value": 1}]})),
                                  (f"{prefix}/E1/data", json.dumps({"ts": now_ms, "points": [{"tag": "AT-000",
                                                                                               "value": 2}]}))])
            finally:
                pub.close()
            await until(lambda: len(settled["live"]) >= 3 and len(settled["history"]) >= 1,
                        what="every message acknowledged on both sessions")
            assert sorted(settled["live"]) == sorted([backfill_topic, f"{prefix}/E1/foo", f"{prefix}/E1/data"])
            assert settled["history"] == [backfill_topic]
            assert decoded.count(backfill_topic) == 1  # the history session's copy only
            assert f"{prefix}/E1/foo" in decoded
            assert ingest.metrics.backfill_copies._value.get() == 1
            assert ingest.metrics.duplicates._value.get() == 0  # not written twice
            assert ingest.metrics.rejected.labels("bad_topic")._value.get() == 1
        assert await count(db) == len(TAGS) + 1
        assert await count(db, f"SELECT count(*) FROM rejects WHERE reason = 'bad_topic' "
                               f"AND topic = '{prefix}/E1/foo'") == 1
        decoded.clear()
        async with running_ingest(settings, wait=False) as ingest:  # the same sessions, resumed
            observe(ingest)  # before the decode loop starts (it keeps its own reference to decode)
            await asyncio.wait_for(ingest.subscribed.wait(), 20)
            pub = Publisher(mqtt_url)
            try:
                pub.publish(f"{prefix}/E1/data", json.dumps({"ts": now_ms + 1000, "points": [{"tag": "AT-000",
                                                                                               "value": 3}]}))
            finally:
                pub.close()
            await until(lambda: ingest.metrics.stored._value.get() >= 1, what="the new live reading stored")
            assert decoded == [f"{prefix}/E1/data"]  # nothing redelivered on either session
            assert ingest.metrics.backfill_copies._value.get() == 0
        assert await count(db) == len(TAGS) + 2

    asyncio.run(go())


def test_live_goes_first_history_gets_a_bounded_share_and_waits_for_room_in_the_rules_inbox() -> None:
    """The decode order alone (no broker): with both sessions holding messages, live chunks go first;
    while live keeps coming, one history chunk in every LIVE_ROUND + 1; history enters the rules' inbox
    only while that holds at most BACKFILL_AHEAD batches, live regardless."""
    from ingest.service import LIVE_ROUND, IngestService
    from park.model import Park
    from tests.ingest_helpers import site

    sink: asyncio.Queue[Any] = asyncio.Queue()
    svc = IngestService(settings=settings_for("mqtt://127.0.0.1:1", "postgresql://hbackfill@127.0.0.1/hbackfill",
                                              "hw/v1"),
                        park=Park.from_site(site()), pool=None, sink=sink,  # type: ignore[arg-type]
                        registry=CollectorRegistry())
    msg: Message = ("hw/v1/E1/data", b"{}", 1, 1, 0, 1)
    svc.transport.inbox.extend([msg] * 100_000)
    svc.backfill.inbox.extend([msg] * 100_000)

    def picks(n: int) -> str:
        out = ""
        for _ in range(n):
            t, _waits = svc._next_source()
            out += "-" if t is None else "H" if t.backfill else "L"
        return out

    assert picks(2 * (LIVE_ROUND + 1)) == ("L" * LIVE_ROUND + "H") * 2
    for _ in range(BACKFILL_AHEAD + 1):
        sink.put_nowait(None)  # the rules' inbox is full enough: history waits, live does not
    assert picks(3 * LIVE_ROUND) == "L" * 3 * LIVE_ROUND
    svc.transport.inbox.clear()
    assert svc._next_source() == (None, True)  # nothing to do but wait for room (or live data)
    sink.get_nowait()
    assert picks(1) == "H"


def test_the_live_copy_of_history_is_stored_by_the_live_session_until_the_history_session_is_established() -> None:
    """A history session the broker refuses from the start (its client id not allowed) was never
    subscribed, so the broker queues nothing for it: the live session's copy of ``…/backfill`` is then
    the only one, and it is decoded and handed on like ``…/data`` (as before v1.2). Once the history
    session has been established, the live copy is acknowledged undecoded. The decode loop alone, no broker."""
    from ingest.service import IngestService
    from park.model import Park
    from tests.ingest_helpers import site

    sink: asyncio.Queue[Any] = asyncio.Queue()
    svc = IngestService(settings=settings_for("mqtt://127.0.0.1:1", "postgresql://hbf2@127.0.0.1/hbf2", "hw/v1"),
                        park=Park.from_site(site()), pool=None, sink=sink,  # type: ignore[arg-type]
                        registry=CollectorRegistry())
    [(_topic, payload)] = history("hw/v1", 1, int(time.time() * 1000) - 3600_000)
    msg: Message = ("hw/v1/E1/backfill", payload.encode() if isinstance(payload, str) else payload, 1, 1,
                    time.time_ns() // 1000, 1)

    async def go() -> None:
        task = asyncio.create_task(svc._decode_loop())
        try:
            assert not svc.backfill.established
            svc.transport.inbox.append(msg)
            svc._wake.set()
            await until(lambda: sink.qsize() == 1, what="the live copy decoded and handed to the rules")
            assert len(sink.get_nowait()) == POINTS and len(svc._pending) == 1
            assert svc.metrics.backfill_copies._value.get() == 0
            svc.backfill.established = True  # as when its SUBACK (or a resumed CONNACK) arrived
            svc.transport.inbox.append(msg)
            svc._wake.set()
            await until(lambda: svc.metrics.backfill_copies._value.get() == 1, what="the live copy passed over")
            assert sink.qsize() == 0 and len(svc._pending) == 1  # nothing decoded, nothing to write
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(go())


def test_the_live_session_connects_after_the_history_sessions_first_attempt() -> None:
    """A resumed live session's backlog may hold copies of ``…/backfill``; whether they are passed over
    depends on the history session being established, so the live session starts only once the history
    session's first attempt has ended (established, refused or failed). No broker: the live session's
    run is a stand-in noting that it started."""
    from ingest.service import IngestService
    from park.model import Park
    from tests.ingest_helpers import site

    svc = IngestService(settings=settings_for("mqtt://127.0.0.1:1", "postgresql://hbf2@127.0.0.1/hbf2", "hw/v1"),
                        park=Park.from_site(site()), pool=None, sink=None,  # type: ignore[arg-type]
                        registry=CollectorRegistry())
    [ss] = svc.sessions
    started = asyncio.Event()

    async def live_run() -> None:
        started.set()

    ss.live.run = live_run  # type: ignore[method-assign]

    async def go() -> None:
        task = asyncio.create_task(svc._live_after_history(ss))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not started.is_set()  # the history session has not tried yet
        ss.backfill.tried.set()
        await asyncio.wait_for(started.wait(), 10)
        await task

    asyncio.run(go())
