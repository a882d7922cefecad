"""Gateway clock offsets: measured from the freshest readings against their arrival, told to the rules.

Table-driven on explicit times (the estimator has no clock of its own). Timeline per case: one
message every ``every`` seconds of arrival for ``minutes``; each carries readings stamped
``offset`` seconds off our clock, plus, where given, a backlog stamped ``backlog`` seconds old.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest

from ingest.clock import HOLD_US, MIN_CHANGE_S, REPORT_EVERY_US, ClockEstimator
from ingest.decode import Decoded, Decoder
from ingest.errors import RejectReason as R
from park.model import Park
from park.types import GatewayClock, GatewayStatus, ReadingBatch, epoch_us
from tests.ingest_helpers import Publisher, prepare, running_ingest, settings_for, site, until

T0 = epoch_us(datetime(2026, 11, 23, 0, 0, tzinfo=UTC))
S = 1_000_000
DELAY = 30_000  # network: 30 ms


def feed(est: ClockEstimator, *, offset: float, minutes: float, every: float = 5.0, backlog: float | None = None,
         start: int = T0) -> int:
    """Returns the arrival time of the last message."""
    rx = start
    end = start + int(minutes * 60 * S)
    k = 0
    while rx < end:
        ts = rx - DELAY + int(offset * S)
        est.observe("E1", ts, rx)
        if backlog is not None:  # a store-and-forward flush: old readings, many per second of arrival
            for j in range(10):  # ten readings 10 s apart per message: catching up 20 times real time
                est.observe("E1", start - int(backlog * S) + (k * 10 + j) * 10 * S, rx)
        rx += int(every * S)
        k += 1
    return rx


@pytest.mark.parametrize("name, offset, backlog, want", [
    ("good clock", 0.0, None, 0.0),
    ("two minutes slow", -120.0, None, -120.0),
    ("ten minutes fast", 600.0, None, 600.0),
    ("good clock flushing a 3-hour backlog", 0.0, 3 * 3600.0, 0.0),
    ("a minute fast flushing a backlog", 60.0, 3 * 3600.0, 60.0),
])
def test_offset_from_the_freshest_readings(name: str, offset: float, backlog: float | None, want: float) -> None:
    est = ClockEstimator()
    feed(est, offset=offset, minutes=3, backlog=backlog)
    got = est.estimate("E1")
    assert got is not None and got == pytest.approx(want, abs=0.1), name


def test_a_backlog_alone_does_not_read_as_a_slow_clock() -> None:
    """Only old readings arriving, much faster than real time (the gateway catching up): no estimate
    rather than "three hours slow"; once live readings come, the true offset."""
    est = ClockEstimator()
    rx = T0
    for k in range(600):  # ten minutes of history sent in one minute
        est.observe("E1", T0 - 3 * 3600 * S + k * S, rx)
        rx += S // 10
    assert est.estimate("E1") is None
    assert est.due(rx) == []
    feed(est, offset=-20.0, minutes=2, start=rx)
    assert est.estimate("E1") == pytest.approx(-20.0, abs=0.1)


def test_reported_on_a_meaningful_change_or_about_once_a_minute() -> None:
    est = ClockEstimator()
    rx = feed(est, offset=-30.0, minutes=0.5)
    assert [e for e, _ in est.due(rx)] == ["E1"]
    assert est.due(rx + S) == []  # nothing new
    est.observe("E1", rx + 2 * S - DELAY - int(30.5 * S), rx + 2 * S)  # jitter, not a change
    assert est.due(rx + 2 * S) == []
    assert est.due(rx + REPORT_EVERY_US) == [("E1", pytest.approx(-30.0, abs=0.1))]  # the minute is up
    # the gateway's clock is set right: said as soon as the new level has held
    later = rx + REPORT_EVERY_US + S
    est.observe("E1", later, later)
    assert est.due(later) == []  # one observation is not yet a level
    est.observe("E1", later + HOLD_US, later + HOLD_US)
    assert abs(-30.0 - 0.0) >= MIN_CHANGE_S
    assert est.due(later + HOLD_US) == [("E1", pytest.approx(0.0, abs=0.1))]


def test_a_clock_set_back_is_followed_once_the_old_level_lapses() -> None:
    est = ClockEstimator()
    rx = feed(est, offset=600.0, minutes=1)
    assert est.estimate("E1") == pytest.approx(600.0, abs=0.1)
    rx = feed(est, offset=0.0, minutes=6, start=rx)  # below the level: like a backlog, until the level lapses
    assert est.estimate("E1") == pytest.approx(0.0, abs=0.1)


def test_a_gateway_ten_minutes_fast_is_refused_at_the_door_but_its_offset_is_measured() -> None:
    dec = Decoder(Park.from_site(site()))
    out = Decoded()
    ts_ms = (T0 + 600 * S) // 1000
    for k in range(3):
        dec.decode(out, "hw/v1/E1/data", json.dumps({"ts": ts_ms + k * 5000, "points": [
            {"tag": "AT-000", "value": 1}]}).encode(), T0 + k * 5 * S)
        dec.decode(out, "hw/v1/E2/point/LT-1", json.dumps({"value": 1, "ts": ts_ms + k * 5000}).encode(),
                   T0 + k * 5 * S)
    assert len(out) == 0 and {r.reason for r in out.rejects} == {R.FUTURE_TIMESTAMP}
    assert dec.clocks.estimate("E1") == pytest.approx(600.0)
    assert dec.clocks.estimate("E2") == pytest.approx(600.0)
    # a bare value is stamped on arrival: it says nothing about the gateway's clock
    dec.decode(out, "hw/v1/E2/point/LT-1", b"5", T0 + 20 * S)
    assert dec.clocks.estimate("E2") == pytest.approx(600.0)


def test_the_rules_hear_of_it(mqtt_url: str, topic_prefix: str, make_database) -> None:  # type: ignore[no-untyped-def]
    """Over the broker: a gateway 10 minutes fast and one 2 minutes slow; GatewayClock items reach
    the rules queue beside the readings and the metric says the same."""
    db = make_database("postgres", "hwi")
    settings = settings_for(mqtt_url, db, topic_prefix)
    sink: asyncio.Queue[ReadingBatch | GatewayStatus | GatewayClock] = asyncio.Queue()
    clocks: dict[str, float] = {}

    async def go() -> None:
        await prepare(db)
        async with running_ingest(settings, sink) as svc:
            svc.decoder.clocks.hold_us = 0  # a level holds at its second sighting: no 10 s wait in a test
            pub = Publisher(mqtt_url)
            for k in range(2):
                now_ms = int(time.time() * 1000)
                pub.publish_many([
                    (f"{topic_prefix}/E1/data", json.dumps({"ts": now_ms + 600_000, "points": [
                        {"tag": "AT-000", "value": k}]})),
                    (f"{topic_prefix}/E2/point/LT-1", json.dumps({"value": k, "ts": now_ms - 120_000})),
                ])
            pub.close()

            async def drain() -> None:
                while len(clocks) < 2:
                    item = await sink.get()
                    if isinstance(item, GatewayClock):
                        clocks[item.enterprise] = item.offset_s

            await asyncio.wait_for(drain(), 30)
            gauge = svc.metrics.clock_offset
            await until(lambda: gauge.labels("E2")._value.get() != 0, what="the gauge set")
            assert gauge.labels("E1")._value.get() == pytest.approx(600, abs=5)
            assert gauge.labels("E2")._value.get() == pytest.approx(-120, abs=5)

    asyncio.run(go())
    assert clocks["E1"] == pytest.approx(600, abs=5) and clocks["E2"] == pytest.approx(-120, abs=5)
