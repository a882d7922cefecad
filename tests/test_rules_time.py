"""The rule core on the streams parks actually produce: bursts, backlogs, wrong clocks, late data,
maintenance, voting by default, restarts. Pure core on a fake timeline (seconds from T0)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from park.site import EnterpriseState
from park.types import AlarmEventKind, ReadingBatch, epoch_us
from park.wording import alarm_text
from rules.engine import RuleEngine
from tests.rules_helpers import SITE, T0, Driver, at, park, ramp

# PT: H 1.6, HH 2.0, trend window 10 min, horizon 20 min. Steady 1.0 for 10 min, then +0.03/min.
PT_RAMP = ramp("PT", 0, 25, 1.0, 0.03, every=10, steady_minutes=10)


def first_trend(d: Driver) -> float:
    return next((t.ts - T0).total_seconds() for t in d.raised("trend"))


def test_a_ramp_delivered_as_one_burst_warns_as_early_as_live() -> None:
    live = Driver()
    for s, tag, v in PT_RAMP:
        live.many([(s, tag, v)])
    burst = Driver()
    # the gateway was cut off the whole time and flushes its store at once, an hour late
    burst.many(PT_RAMP, arrive=PT_RAMP[-1][0] + 3600)
    t_live, t_burst = first_trend(live), first_trend(burst)
    assert abs(t_burst - t_live) <= 600 / 16  # within one sampling step (window / K)
    h_live = next(t.ts for t in live.raised("high"))
    assert (h_live - T0).total_seconds() - t_live >= 5 * 60  # the early warning is early
    [tr] = burst.raised("trend")
    assert tr.facts["backfilled"] is True and tr.facts["delay_s"] >= 3600
    assert "补传数据" in alarm_text("trend", tr.facts, tr.value, tr.limit)


def test_no_trend_warning_while_the_value_falls_after_a_peak() -> None:
    d = Driver()
    # PT rises 0.07/min from 1.0 for 10 min (H 1.6 crossed at 8.6 min), then falls 0.1/min: back
    # below H at 11.3 min, while the 10-minute window still holds the rise
    rows = [(s, "PT", 1.0 + 0.07 * min(s, 600) / 60 - 0.1 * max(0, s - 600) / 60) for s in range(0, 1500, 10)]
    for s, tag, v in rows:
        d.many([(s, tag, v)])
    timeline = [(k, r, sec) for k, r, _tag, _sev, sec in d.timeline()]
    h_cleared = next(sec for k, r, sec in timeline if (k, r) == ("cleared", "high"))
    assert 660 < h_cleared < 700
    assert [x for x in timeline if x[1] == "trend" and x[0] == "raised" and x[2] >= h_cleared] == []


def park_backlog(hours: float = 2.0) -> list[tuple[float, str, float]]:
    """Two hours of the whole park (E1) every 10 s: a slow leak reaching two detectors, a tank filling."""
    rows = []
    for s in range(0, int(hours * 3600), 10):
        m = s / 60
        rows += [(s, "G1", max(0.5, (m - 30) * 2.0) if m < 50 else 0.5),  # a leak at G1 from minute 30 to 50
                 (s, "G2", max(0.5, (m - 33) * 2.0) if m < 47 else 0.5),  # reaching G2, both above 25 only
                 (s, "G3", 0.5),                                          # from minute 45.5 to 47
                 (s, "LT", 5.0 + max(0.0, m - 60) * 0.05),  # tank overfill from minute 60
                 (s, "CL", 0.1), (s, "TT", 25.0), (s, "PT", 1.0)]
    return rows


def test_a_two_hour_backlog_drained_after_a_restart_gives_the_same_alarms_as_live() -> None:
    rows = park_backlog()
    live = Driver()
    by_time: dict[float, list[tuple[float, str, float]]] = {}
    for r in rows:
        by_time.setdefault(r[0], []).append(r)
    for s in sorted(by_time):
        live.many(by_time[s])
    drained = Driver()
    # after the restart the broker hands the backlog over in large batches, each holding many
    # minutes of the whole park with one sensor's readings after another's (not in time order)
    for k in range(0, len(rows), 3000):  # about 70 minutes of the park per batch
        drained.many(sorted(rows[k:k + 3000], key=lambda r: (r[1], r[0])), arrive=7300)
    # floods are counted on hazardwatch's clock (what the duty room receives), so they may differ
    want = sorted(x for x in live.timeline() if x[1] != "flood")
    got = [x for x in drained.timeline() if x[1] != "flood"]
    assert [x[4] for x in got] == sorted(x[4] for x in got)  # in time order across sensors, batch by batch
    assert want == sorted(got)
    rules = {x[1] for x in want if x[0] == "raised"}
    assert {"vote", "trend", "high"} <= rules
    vote = next(t for t in drained.raised("vote"))
    assert vote.severity.value == "red" and vote.facts["backfilled"] is True


def test_a_gateway_with_a_ten_minute_clock_offset_is_not_offline_and_raises_the_clock_alarm() -> None:
    d = Driver()
    d.tick(0)
    out: list[tuple[object, ...]] = []
    for s in range(0, 1800, 10):
        # E2's gateway clock is 10 minutes slow: its readings say s − 600 and arrive at s
        out += d.read(s - 600, "X", 5.0, ent="E2", arrive=s)
        out += d.read(s, "G1", 1.0, arrive=s)
        out += d.tick(s + 5)
    out += d.clock(900, "E2", -600.0)
    assert [o for o in out if o[1] in ("comm_loss", "stale") and o[0] == "raised" and o[2] in (None, "X")] == []
    clock = [t for t in d.log if t.alarm.rule == "clock"]
    assert [(t.kind.value, t.severity.value, t.alarm.enterprise) for t in clock] == [("raised", "blue", "E2")]
    assert d.engine.gateway_clocks["E2"][0] == -600.0
    assert "时钟慢 10 分钟" in alarm_text("clock", clock[0].facts, clock[0].value, clock[0].limit)
    # its alarms are not "late data": the known offset is taken off the delay
    d.read(1500, "X", 9.5, ent="E2", arrive=2100)
    [x] = [t for t in d.raised("high") if t.alarm.tag == "X"]
    assert "backfilled" not in x.facts
    assert d.clock(2110, "E2", -3.0) == [("cleared", "clock", None, "blue")]


def test_a_one_hour_old_backfill_raises_once_flagged_and_noticed_now() -> None:
    d = Driver()
    rows = [(s, "LT", 9.5 if s >= 600 else 5.0) for s in range(0, 1200, 10)]
    out = d.many(rows, arrive=1200 + 3600)
    assert out.count(("raised", "high", "LT", "orange")) == 1
    [r] = d.raised("high")
    assert r.ts == at(600) and r.noticed_at == at(4800)
    assert r.alarm.raised_at == at(600) and r.alarm.noticed_at == at(4800)
    assert r.facts["backfilled"] is True and r.facts["delay_s"] == 4200
    live = Driver()
    live.many(rows[:61], arrive=600)
    assert "backfilled" not in live.raised("high")[0].facts


def test_the_event_of_a_backfilled_raise_carries_both_clocks() -> None:
    from rules.service import to_event

    d = Driver()
    d.read(0, "CL", 3.0, arrive=3600)  # Cl2 2×OEL: red
    [t] = [x for x in d.log if x.kind is AlarmEventKind.RAISED]
    ev = to_event(t)
    assert (ev.ts, ev.noticed_at) == (at(0), at(3600))
    assert ev.detail["backfilled"] is True and ev.severity.value == "red" and ev.detail["state"] == "active_unacked"
    assert ev.message == "CL 二级报警(2×OEL)：3.0 mg/m³，限值 2.0 mg/m³（补传数据，迟到 1 小时）"


def test_escalation_of_a_one_hour_old_backfill_sends_one_message_per_recipient() -> None:
    from collections import Counter

    from alerting.escalation import Escalator
    from rules.service import to_event

    d = Driver()
    d.read(0, "CL", 3.0, arrive=3600)  # red: enterprise and town at once, district after 5 min, repeat every 5 min
    [t] = [x for x in d.log if x.kind is AlarmEventKind.RAISED]
    d.engine.bind(t.alarm, 1)  # as the store would: alerting plans only stored alarms
    ent = "            contacts: [{name: 张工, phone: '13800000003', channels: [sms]}]\n"
    town = "        contacts: [{name: 镇值班, phone: '13800000002', channels: [sms]}]\n"
    told = SITE.replace("            name: 一号化工\n", "            name: 一号化工\n" + ent).replace(
        "        name: 一镇\n", "        name: 一镇\n" + town)
    esc = Escalator(park(told))
    planned = esc.on_event(to_event(t)) + esc.on_tick(at(3600.2))
    # the reading is an hour old, but the alarm was raised now: only the immediate step is due
    assert sorted((p.level, p.step) for p in planned) == [("enterprise", "immediate"), ("town", "immediate")]
    assert set(Counter(p.address for p in planned).values()) == {1}


def test_a_leak_starting_during_maintenance_alarms_at_once() -> None:
    d = Driver()
    d.engine.set_enterprise_state("E1", EnterpriseState.MAINTENANCE, T0)
    assert d.read(10, "G1", 30) == [("raised", "high", "G1", "yellow")]
    assert d.read(20, "G2", 30) == [("raised", "high", "G2", "yellow"), ("raised", "vote", None, "red")]
    assert d.read(30, "SP", 1) == [("raised", "spark", "SP", "red")]
    assert [t.alarm.suppressed for t in d.log] == [False] * 4


def test_a_process_condition_present_at_the_end_of_maintenance_is_raised_then() -> None:
    d = Driver()
    d.engine.set_enterprise_state("E1", EnterpriseState.MAINTENANCE, T0)
    assert d.read(10, "LT", 9.5) == []  # suppressed by design
    assert d.read(20, "PT", 1.7) == []
    assert d.read(30, "PT", 1.0) == []  # gone again before the end: never raised
    out = d.engine.set_enterprise_state("E1", EnterpriseState.RUNNING, at(600))
    assert [(t.kind.value, t.alarm.tag, t.severity.value) for t in out] == [("raised", "LT", "orange")]
    [t] = out
    assert t.ts == at(600) and t.noticed_at == at(600) and t.facts["after_suppression"] is True
    assert d.read(610, "LT", 9.6) == []  # the same condition: one alarm


def test_two_of_three_detectors_give_one_red_vote_with_no_site_file_key() -> None:
    assert "vote_k" not in SITE.split("hazard_sources:")[1].split("sensors:")[0]
    d = Driver()
    d.many([(0, "G1", 30), (5, "G2", 31), (6, "G3", 32)])
    votes = d.raised("vote")
    assert len(votes) == 1 and votes[0].severity.value == "red"
    f = votes[0].facts
    assert (f["hazard_source_name"], f["detectors"], f["k"], f["n"]) == ("苯罐区", ["G1", "G2"], 2, 3)
    text = alarm_text("vote", f, votes[0].value, votes[0].limit)
    assert text.startswith("苯罐区 2/3 个可燃气体探测器同时报警") and "G1、G2" in text


def test_vote_k_zero_turns_voting_off() -> None:
    site = SITE.replace("{code: HS1, name: 苯罐区, grade: 3}", "{code: HS1, name: 苯罐区, grade: 3, vote_k: 0}")
    d = Driver(RuleEngine(park(site)))
    d.many([(0, "G1", 30), (5, "G2", 31)])
    assert d.raised("vote") == []


def test_each_event_carries_the_alarm_as_it_was_at_that_moment() -> None:
    d = Driver()
    # a raise at 39.2 %LEL and an upgrade at 54.6 land in one batch
    d.many([(0, "G1", 39.2), (5, "G1", 54.6)])
    raised, upgraded = [t for t in d.log if t.alarm.tag == "G1"]
    assert (raised.kind.value, raised.severity.value, raised.value, raised.limit) == ("raised", "yellow", 39.2, 25)
    assert (upgraded.kind.value, upgraded.severity.value, upgraded.value, upgraded.limit) == (
        "upgraded", "orange", 54.6, 50)
    assert alarm_text("high", raised.facts, raised.value, raised.limit) == "G1 一级报警：39.2 %LEL，限值 25.0 %LEL"


def test_closed_alarms_leave_every_per_alarm_table() -> None:
    d = Driver()
    for k in range(50):
        d.read(k * 100, "LT", 9.5)
        aid = d.alarm("high", "LT")
        d.read(k * 100 + 50, "LT", 5.0)
        d.engine.ack(aid, "值班员", at(k * 100 + 60))
    d.tick(50 * 100 + 7200)  # an hour on: history that can no longer count is gone too
    lt = f"s:{d.id('LT')}:high"
    assert lt not in d.engine.alarms and [a for a in d.engine.by_id.values() if a.key == lt] == []
    assert all(a.is_open for a in d.engine.by_id.values())  # only E1's comm loss, open now
    assert lt not in d.engine.life.chatter and d.engine.life.held == {}


def test_restart_mid_ramp_keeps_the_early_warning() -> None:
    whole = Driver()
    for s, tag, v in PT_RAMP:
        whole.many([(s, tag, v)])
    first = Driver()
    half = [r for r in PT_RAMP if r[0] < 930]  # 5.5 minutes into the rise, the warning not yet due
    for s, tag, v in half:
        first.many([(s, tag, v)])
    assert first.raised("trend") == []
    blobs = first.engine.snapshot()
    second = Driver()
    assert set(second.engine.restore_snapshot(blobs)) >= {"trend", "liveness", "engine"}
    for s, tag, v in PT_RAMP[len(half):]:
        second.many([(s, tag, v)])
    assert first_trend(second) == first_trend(whole)
    cold = Driver()  # the same restart without the snapshot is blind for its window
    for s, tag, v in PT_RAMP[len(half):]:
        cold.many([(s, tag, v)])
    assert first_trend(cold) > first_trend(whole) + 60


def test_an_unreadable_snapshot_part_is_skipped() -> None:
    d = Driver()
    assert d.engine.restore_snapshot({"trend": b"not numpy", "vote": b""}) == []


def test_readings_of_unknown_or_out_of_service_sensors_and_empty_batches_change_nothing() -> None:
    e = RuleEngine(park())
    b = ReadingBatch(np.array([999, -1], np.int32), np.array([epoch_us(T0)] * 2, np.int64),
                     np.array([1e9, 1e9]), np.zeros(2, np.int8), received_us=epoch_us(T0))
    assert e.on_batch(b, T0) == [] and e.on_batch(ReadingBatch.empty(), T0) == []
    assert e.on_tick(T0 + timedelta(seconds=1)) == []
