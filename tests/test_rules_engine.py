"""The pure rule core on a fake timeline: one table row per rule kind and lifecycle transition."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from park.site import EnterpriseState
from rules.errors import AlarmNotFound, InvalidTransition
from tests.rules_helpers import T0, Driver


def test_threshold_h_then_hh_upgrades_in_place_then_clears_with_deadband() -> None:
    d = Driver()
    # t=0 normal · t=10 8.1 ≥ H · t=20 9.2 ≥ HH · t=30 8.9 (HH deadband 0.2 holds HH) · t=40 7.9 (H - db holds H)
    # t=50 7.7 clears
    assert d.read(0, "LT", 5.0) == []
    assert d.read(10, "LT", 8.1) == [("raised", "high", "LT", "yellow")]
    assert d.read(20, "LT", 9.2) == [("upgraded", "high", "LT", "orange")]
    assert d.read(30, "LT", 8.9) == []
    assert d.read(40, "LT", 7.9) == []
    assert d.read(50, "LT", 7.7) == [("cleared", "high", "LT", "orange")]
    assert d.open_alarms() == {f"s:{d.id('LT')}:high": "cleared_unacked"}


def test_low_and_low_low() -> None:
    d = Driver()
    assert d.read(0, "LT", 0.9) == [("raised", "low", "LT", "yellow")]
    assert d.read(10, "LT", 0.4) == [("upgraded", "low", "LT", "orange")]


def test_on_delay_and_off_delay_complete_on_the_readings_time() -> None:
    d = Driver()
    # LTD: on-delay 30 s, off-delay 20 s. t=0 9.5 (pending) · t=20 still · t=31 fires · t=40 normal ·
    # t=55 still inside the off-delay · t=61 a reading after the delay still normal: clears
    assert d.read(0, "LTD", 9.5) == []
    assert d.read(20, "LTD", 9.5) == []
    assert d.read(31, "LTD", 9.5) == [("raised", "high", "LTD", "orange")]
    assert d.read(40, "LTD", 5.0) == []
    assert d.read(55, "LTD", 5.0) == []
    assert d.read(61, "LTD", 5.0) == [("cleared", "high", "LTD", "orange")]
    raise_ts, clear_ts = [t.ts for t in d.log if t.alarm.tag == "LTD"]
    assert (raise_ts - T0, clear_ts - T0) == (timedelta(seconds=31), timedelta(seconds=61))


def test_a_spike_shorter_than_the_on_delay_never_alarms() -> None:
    d = Driver()
    assert d.read(0, "LTD", 9.5) == [] and d.read(10, "LTD", 5.0) == [] and d.tick(100) == []


def test_behind_a_slow_gateway_the_on_delay_waits_for_the_next_reading() -> None:
    """A gateway uploading every 30 s: one 9.5 spike, then the next upload shows it normal."""
    d = Driver()
    assert d.read(0, "LTD", 9.5, arrive=1) == []
    # the wall clock passes the 30 s on-delay long before the next upload arrives
    assert [r for r in d.tick(45) if r[2] == "LTD"] == []
    assert d.read(30, "LTD", 5.0, arrive=62) == []
    assert [t for t in d.log if t.alarm.tag == "LTD"] == []


def test_gas_defaults_and_severities_from_the_standards() -> None:
    d = Driver()
    assert d.read(0, "G1", 26) == [("raised", "high", "G1", "yellow")]  # combustible first level 25 %LEL
    assert d.read(5, "G1", 51) == [("upgraded", "high", "G1", "orange")]  # second level 50 %LEL
    assert d.read(0, "CL", 1.5) == [("raised", "high", "CL", "yellow")]  # Cl2 1 mg/m3 = 1×OEL
    assert d.read(5, "CL", 2.5) == [("upgraded", "high", "CL", "red")]  # toxic second level is red
    # HH on a grade-1 major hazard source is red
    assert d.read(0, "PT", 2.1) == [("raised", "high", "PT", "red")]


def test_vote_two_of_three_detectors_confirm_a_leak() -> None:
    d = Driver()
    assert d.read(0, "G1", 30) == [("raised", "high", "G1", "yellow")]
    assert d.read(5, "G2", 30) == [("raised", "high", "G2", "yellow"), ("raised", "vote", None, "red")]
    assert d.read(10, "G2", 2) == [("cleared", "high", "G2", "yellow"), ("cleared", "vote", None, "red")]


def test_rate_of_change() -> None:
    d = Driver()
    # TT rise limit 5 /min: +4 in 60 s is fine, +8 in 60 s is too fast
    assert d.read(0, "TT", 20) == [] and d.read(60, "TT", 24) == []
    assert d.read(120, "TT", 32) == [("raised", "rate", "TT", "yellow")]
    assert d.read(180, "TT", 33) == [("cleared", "rate", "TT", "yellow")]


def test_rate_is_judged_over_half_a_minute_or_more_not_on_the_noise_between_readings() -> None:
    d = Driver()
    # TT rise limit 5/min: readings 10 s apart flicker by 1 °C (6/min between neighbours), no trend
    out = []
    for k in range(60):
        out += d.read(k * 10, "TT", 20.0 + (k % 2))
    assert [o for o in out if o[1] == "rate"] == []
    # one ramp 8 °C/min: alarms within about a minute
    out = []
    for k in range(60, 80):
        out += d.read(k * 10, "TT", 20.0 + (k - 60) * 8 / 6)
    assert ("raised", "rate", "TT", "yellow") in out


def test_trend_warning_comes_before_the_hh_limit() -> None:
    d = Driver()
    # PT climbs 0.02 per minute from 1.0: H (1.6) at 30 min, HH (2.0) at 50 min; a 20-minute horizon
    # warns once the projection to H is under 20 minutes, after enough points (~10 min in)
    first_trend = first_hh = None
    for m in range(0, 60):
        out = d.read(m * 60, "PT", 1.0 + 0.02 * m)
        if ("raised", "trend", "PT", "blue") in out and first_trend is None:
            first_trend = m
        if any(o[0] in ("raised", "upgraded") and o[1] == "high" and o[3] == "red" for o in out):
            first_hh = m
    assert first_trend is not None and first_hh is not None
    assert first_hh - first_trend >= 30, (first_trend, first_hh)
    trend = next(t for t in d.log if t.alarm.rule == "trend")
    assert trend.facts["eta_s"] > 0 and trend.facts["target_level"] == "H" and trend.limit == 1.6


def test_stale_sensor_and_recovery() -> None:
    d = Driver()
    d.read(0, "LT", 5)  # interval 10 s, stale after 5 × 10 s of nothing arriving
    d.read(30, "G1", 1)  # while the rest of the enterprise still sends
    assert d.tick(40) == []
    d.read(55, "G1", 1)
    assert d.tick(60) == [("raised", "stale", "LT", "blue")]
    assert d.read(70, "LT", 5) == [("cleared", "stale", "LT", "blue")]


def test_a_sensor_that_never_reports_after_start_is_stale_after_its_bound() -> None:
    d = Driver()
    d.tick(0)  # the rule stage starts
    for s in range(0, 60, 10):
        d.read(s, "G1", 1)  # E1 sends, LT (10 s interval) never does
    assert ("raised", "stale", "LT", "blue") in d.tick(55)
    assert ("raised", "comm_loss", None, "orange") in d.tick(301)  # E2 never sent anything at all


def test_a_silent_enterprise_is_one_comm_loss_not_a_stale_alarm_per_sensor() -> None:
    d = Driver()
    d.many([(0, t, 1.0) for t in ("LT", "G1", "G2", "G3", "CL")])
    d.read(0, "X", 1, ent="E2")
    assert [r for r in d.tick(200) if r[1] == "stale"] == []
    out = d.tick(301)
    assert ("raised", "comm_loss", None, "orange") in out and [r for r in out if r[1] == "stale"] == []


def test_comm_loss_from_last_will_and_from_silence() -> None:
    d = Driver()
    assert d.status(0, "E2", False) == [("raised", "comm_loss", None, "orange")]
    assert d.status(30, "E2", True) == [("cleared", "comm_loss", None, "orange")]
    d.read(0, "X", 1, ent="E2")
    out = d.tick(301)
    assert ("raised", "comm_loss", None, "orange") in out


def test_instrument_fault_bad_quality_range_and_flatline() -> None:
    d = Driver()
    assert d.read(0, "TT", 25, q=2) == [("raised", "fault", "TT", "yellow")]
    assert d.read(10, "TT", 25) == [("cleared", "fault", "TT", "yellow")]
    d2 = Driver()
    assert d2.read(0, "TT", 500) == [("raised", "fault", "TT", "yellow")]  # range -20..200
    d3 = Driver()
    for s in range(0, 4000, 60):  # flatline_after 1 h: the first reading past it says so
        assert d3.read(s, "G3", 1.25) == ([("raised", "fault", "G3", "yellow")] if s == 3660 else [])
    assert d3.read(4010, "G3", 1.3) == [("cleared", "fault", "G3", "yellow")]


def test_a_good_reading_clears_an_instrument_fault_with_nothing_else_going_on() -> None:
    d = Driver()
    assert d.read(0, "G1", 0.0, q=2) == [("raised", "fault", "G1", "yellow")]
    assert d.read(10, "G1", 0.0, q=2) == []
    assert d.read(20, "G1", 0.3) == [("cleared", "fault", "G1", "yellow")]


def test_bad_quality_is_never_judged_against_limits() -> None:
    d = Driver()
    assert d.read(0, "LT", 99, q=2) == [("raised", "fault", "LT", "yellow")]


def test_spark_is_red_and_latches_until_acknowledged() -> None:
    d = Driver()
    assert d.read(0, "SP", 1) == [("raised", "spark", "SP", "red")]
    assert d.read(5, "SP", 0) == []  # latched
    aid = d.alarm("spark", "SP")
    out = d.engine.ack(aid, "值班员", T0 + timedelta(seconds=10))
    assert [(t.kind.value, t.alarm.state) for t in out] == [("acked", "closed")]


def test_power_during_an_ordered_stop_and_above_capacity() -> None:
    d = Driver()
    for week in range(3):  # learn the running load: 800 kW at this hour of the week
        d.read(week * 7 * 86400, "JT", 800)
    d.engine.set_enterprise_state("E1", EnterpriseState.STOPPED, T0)
    assert d.read(3 * 7 * 86400, "JT", 20) == []  # idle while stopped
    assert d.read(3 * 7 * 86400 + 60, "JT", 600) == [("raised", "power", "JT", "orange")]
    d2 = Driver()
    assert ("raised", "power", "JT", "orange") in d2.read(0, "JT", 1200)  # above approved 1000 kW


def test_lifecycle_ack_then_clear_closes_clear_then_ack_closes() -> None:
    d = Driver()
    d.read(0, "LT", 8.5)
    aid = d.alarm("high", "LT")
    [t] = d.engine.ack(aid, "张工", T0)
    assert t.alarm.state == "active_acked"
    d.read(10, "LT", 5)
    assert d.open_alarms() == {}  # acked + cleared = closed
    d.read(20, "LT", 8.5)
    aid2 = d.alarm("high", "LT")
    assert aid2 != aid
    d.read(30, "LT", 5)
    assert d.open_alarms() == {f"s:{d.id('LT')}:high": "cleared_unacked"}
    d.engine.ack(aid2, "张工", T0)
    assert d.open_alarms() == {}
    with pytest.raises(AlarmNotFound):
        d.engine.ack(aid2, "张工", T0)


def test_re_alarm_before_ack_keeps_one_alarm() -> None:
    d = Driver()
    d.read(0, "LT", 8.5)
    d.read(100, "LT", 5)
    out = d.read(200, "LT", 8.5)
    assert out == [("raised", "high", "LT", "yellow")] and len(d.open_alarms()) == 1


def test_resolve_records_handling_and_closes() -> None:
    d = Driver()
    d.read(0, "LT", 9.5)
    aid = d.alarm("high", "LT")
    [t] = d.engine.resolve(aid, "值班长", T0, cause="进料阀内漏", action="关闭上游阀门")
    assert (t.kind.value, t.alarm.state, t.detail["action"]) == ("resolved", "closed", "关闭上游阀门")


def test_shelving_expires_by_itself() -> None:
    d = Driver()
    d.read(0, "LT", 9.5)
    aid = d.alarm("high", "LT")
    out = d.engine.shelve(aid, "值班员", T0, reason="检修确认", until=T0 + timedelta(minutes=30))
    assert out[0].kind.value == "shelved"
    assert not [x for x in d.tick(29 * 60) if x[0] == "unshelved"]
    assert ("unshelved", "high", "LT", "orange") in d.tick(30 * 60)
    with pytest.raises(InvalidTransition):
        d.engine.shelve(aid, "x", T0, reason="r", until=T0 - timedelta(seconds=1))


def test_maintenance_suppresses_process_alarms_by_design_but_never_life_safety() -> None:
    d = Driver()
    d.read(0, "LT", 9.5)
    d.read(0, "G2", 30)
    out = d.engine.set_enterprise_state("E1", EnterpriseState.MAINTENANCE, T0)
    assert [(t.kind.value, t.alarm.tag) for t in out] == [("suppressed", "LT")]  # the gas alarm stays live
    assert d.read(5, "PT", 1.7) == []  # a new process alarm is suppressed by design
    assert d.read(10, "G1", 60) == [("raised", "high", "G1", "orange"), ("raised", "vote", None, "red")]
    assert d.read(20, "SP", 1) == [("raised", "spark", "SP", "red")]
    assert d.read(30, "CL", 1.5) == [("raised", "high", "CL", "yellow")]


def test_chattering_is_detected_and_damped() -> None:
    d = Driver()
    # t=0..50: in and out of H every 10 s → 3 raises within a minute
    kinds = []
    for s, v in [(0, 8.5), (10, 5), (20, 8.5), (30, 5), (40, 8.5), (50, 5), (60, 8.5), (70, 5)]:
        kinds += [k for k, *_ in d.read(s, "LT", v)]
    assert "chattering" in kinds
    assert kinds.count("raised") <= 3  # damped: held active instead of toggling
    assert ("cleared", "high", "LT", "yellow") in d.tick(300)


def test_flood_marks_events_and_ends() -> None:
    from rules.engine import RuleEngine
    from tests.rules_helpers import park

    p = park()
    d = Driver(RuleEngine(p, p.site.alarm_management.model_copy(update={"stale_multiple": 1e6,
                                                                          "comm_loss_after": timedelta(days=1)})))
    tags = ["LT", "G1", "G2", "G3", "CL", "PT", "TT", "SP", "LTD"]
    values = {"LT": 9.5, "G1": 60, "G2": 60, "G3": 60, "CL": 3, "PT": 2.5, "TT": 70, "SP": 1, "LTD": 9.5}
    for k, t in enumerate(tags):
        d.read(k, t, values[t])
    d.read(20, "X", 9.5, ent="E2")  # the tenth alarm in ten minutes in the park
    starts = [t for t in d.log if t.kind.value == "flood_start"]
    assert starts and starts[0].alarm.enterprise in ("E1", "*")
    assert any(t.alarm.flood for t in d.log if t.kind.value == "raised")
    assert any(t.kind.value == "flood_end" for t in d.engine.on_tick(T0 + timedelta(minutes=30)))


def test_out_of_order_and_duplicate_readings_do_not_flip_state() -> None:
    d = Driver()
    assert d.read(100, "LT", 9.5) == [("raised", "high", "LT", "orange")]
    assert d.read(50, "LT", 5.0) == []  # older than what was judged: stored, not judged
    assert d.read(100, "LT", 9.5) == []  # redelivered
    assert len(d.open_alarms()) == 1


def test_a_batch_with_a_spike_inside_is_caught() -> None:
    d = Driver()
    out = d.many([(0, "LT", 5), (1, "LT", 9.5), (2, "LT", 5)])
    assert ("raised", "high", "LT", "orange") in out and ("cleared", "high", "LT", "orange") in out


def test_restore_keeps_open_alarms_without_raising_again() -> None:
    d = Driver()
    d.read(0, "LT", 9.5)
    restored = [a for a in d.engine.alarms.values()]
    d2 = Driver()
    d2.engine.restore(restored)
    assert d2.read(10, "LT", 9.6) == []
    assert d2.read(20, "LT", 5.0) == [("cleared", "high", "LT", "orange")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=7.81, max_value=7.99), min_size=1, max_size=30))
def test_no_alarm_inside_the_deadband(values: list[float]) -> None:
    d = Driver()
    d.read(0, "LT", 8.5)  # in H
    for k, v in enumerate(values):
        assert d.read(10 + k, "LT", v) == []  # between h - deadband (7.8) and h: stays, no new alarm


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 600), st.sampled_from(["LT", "G1", "PT", "SP"]),
                          st.floats(min_value=-1, max_value=100)), max_size=40))
def test_never_two_open_alarms_for_one_key(rows: list[tuple[int, str, float]]) -> None:
    d = Driver()
    for s, t, v in rows:
        d.read(s, t, v)
        keys = list(d.engine.alarms)
        assert len(keys) == len(set(keys))
        raised = [x.alarm for x in d.log if x.kind.value == "raised" and x.alarm.is_open]
        by_key: dict[str, set[int]] = {}
        for a in raised:
            by_key.setdefault(a.key, set()).add(id(a))
        assert all(len(v) == 1 for v in by_key.values())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=20))
def test_on_delay_never_fires_early(gaps: list[int]) -> None:
    d = Driver()
    t = 0
    for g in gaps:
        out = d.read(t, "LTD", 9.5)
        if ("raised", "high", "LTD", "orange") in out:
            assert t >= 30
            return
        t += g


def test_the_core_does_no_io() -> None:
    """Rule evaluation and alarm state import nothing of asyncio, databases or MQTT."""
    banned = {"asyncio", "psycopg", "psycopg_pool", "paho", "aiomqtt", "httpx", "socket"}
    core = [p.name for p in (Path(__file__).parent.parent / "rules").glob("*.py")
            if p.name not in ("service.py", "store.py", "metrics.py", "__init__.py")]
    assert {"engine.py", "lifecycle.py", "threshold.py", "trend.py", "liveness.py", "vote.py"} <= set(core)
    for name in core:
        tree = ast.parse((Path(__file__).parent.parent / "rules" / name).read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for m in mods:
                assert m.split(".")[0] not in banned, f"rules/{name} imports {m}"
