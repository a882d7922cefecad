"""Escalation timing on a fake clock, for every policy shape of the contract (docs/contract.md §3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerting.errors import BadLink
from alerting.escalation import Escalator, Planned
from alerting.links import LinkSigner
from alerting.messages import SMS_MAX, Renderer
from park.model import Park
from park.sitefile import parse_site
from park.types import AlarmEvent, AlarmEventKind, Severity
from tests.site_helpers import MINIMAL_SITE

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
PARK = Park.from_site(parse_site(MINIMAL_SITE, environ={}))


def ev(kind: AlarmEventKind, sev: Severity, at: float = 0, alarm_id: int = 7, **kw: object) -> AlarmEvent:
    return AlarmEvent(alarm_id=alarm_id, kind=kind, ts=T0 + timedelta(minutes=at), enterprise="E001", rule="high",
                      severity=sev, sensor_id=2, tag="AT-2001", value=25.0, limit=20.0,
                      message="AT-2001 二级报警：25 mg/m3，限值 20 mg/m3", **kw)  # type: ignore[arg-type]


def who(plans: list[Planned]) -> list[tuple[str, str]]:
    return sorted({(p.level, p.step) for p in plans})


def run(esc: Escalator, minutes: list[float]) -> dict[float, list[tuple[str, str]]]:
    return {m: who(esc.on_tick(T0 + timedelta(minutes=m))) for m in minutes}


def test_red_enterprise_and_town_at_once_district_after_5m_reminders_every_5m() -> None:
    esc = Escalator(PARK)
    # t=0 raise · t=4 nothing · t=5 district + 1st reminder to those told before · t=10 2nd reminder to all
    assert who(esc.on_event(ev(AlarmEventKind.RAISED, Severity.RED))) == [("enterprise", "immediate"),
                                                                          ("town", "immediate")]
    got = run(esc, [4, 5, 10])
    assert got[4] == []
    assert got[5] == [("district", "then-district"), ("enterprise", "repeat-1"), ("town", "repeat-1")]
    assert got[10] == [("district", "repeat-2"), ("enterprise", "repeat-2"), ("town", "repeat-2")]


def test_orange_two_steps_and_ack_at_each_point() -> None:
    for ack_at, expect_levels in [(5, {"enterprise"}), (15, {"enterprise", "town"}),
                                  (45, {"enterprise", "town", "district"})]:
        esc = Escalator(PARK)
        plans = esc.on_event(ev(AlarmEventKind.RAISED, Severity.ORANGE))
        for m in range(1, ack_at):
            plans += esc.on_tick(T0 + timedelta(minutes=m))
        assert esc.on_event(ev(AlarmEventKind.ACKED, Severity.ORANGE, at=ack_at, by="张工")) == []
        after = [p for m in range(ack_at, 120) for p in esc.on_tick(T0 + timedelta(minutes=m))]
        assert after == [], f"acked at {ack_at} min, still planned {who(after)}"
        assert {p.level for p in plans} == expect_levels


def test_yellow_and_blue() -> None:
    esc = Escalator(PARK)
    esc.on_event(ev(AlarmEventKind.RAISED, Severity.YELLOW))
    assert run(esc, [29, 30, 90])[30] == [("town", "then-town")]
    esc2 = Escalator(PARK)
    assert who(esc2.on_event(ev(AlarmEventKind.RAISED, Severity.BLUE))) == [("enterprise", "immediate")]
    assert all(v == [] for v in run(esc2, [10, 60, 600]).values())


def test_upgrade_replans_the_rest_at_the_higher_severity_without_resending() -> None:
    esc = Escalator(PARK)
    esc.on_event(ev(AlarmEventKind.RAISED, Severity.YELLOW))
    # t=2 upgraded to red: the town (red's immediate) now, the district 5 min after the raise
    assert who(esc.on_event(ev(AlarmEventKind.UPGRADED, Severity.RED, at=2))) == [("town", "upgrade")]
    assert run(esc, [4, 5])[5] == [("district", "then-district"), ("enterprise", "repeat-1"), ("town", "repeat-1")]


def test_clear_and_resolve_tell_everyone_already_told() -> None:
    esc = Escalator(PARK)
    esc.on_event(ev(AlarmEventKind.RAISED, Severity.RED))
    assert who(esc.on_event(ev(AlarmEventKind.CLEARED, Severity.RED, at=1))) == [("enterprise", "cleared"),
                                                                                ("town", "cleared")]
    assert who(esc.on_event(ev(AlarmEventKind.RESOLVED, Severity.RED, at=2, by="值班长",
                               detail={"action": "关阀"}))) == [("enterprise", "resolved"), ("town", "resolved")]
    assert run(esc, [10, 20]) == {10: [], 20: []}


def test_idempotency_keys_name_alarm_unit_contact_channel_step() -> None:
    plans = Escalator(PARK).on_event(ev(AlarmEventKind.RAISED, Severity.RED))
    keys = {p.key for p in plans}
    # the contact is named by its address, not its name (two 张工 in one unit are two people)
    assert "7/E001/13800000003/sms/immediate" in keys and "7/HM/robot/wecom_robot/immediate" not in keys
    assert "7/LJ/13800000002/sms/immediate" in keys
    assert len(keys) == len(plans)


def test_shelving_pauses_and_unshelving_resumes() -> None:
    esc = Escalator(PARK)
    esc.on_event(ev(AlarmEventKind.RAISED, Severity.ORANGE))
    esc.on_event(ev(AlarmEventKind.SHELVED, Severity.ORANGE, at=1))
    assert run(esc, [15]) == {15: []}
    assert ("town", "then-town") in who(esc.on_event(ev(AlarmEventKind.UNSHELVED, Severity.ORANGE, at=16)))


def test_message_names_everything_the_contract_asks_and_fits_two_sms_segments() -> None:
    [p] = [p for p in Escalator(PARK).on_event(ev(AlarmEventKind.RAISED, Severity.RED)) if p.unit == "E001"]
    r = Renderer(PARK).render(p, "https://hw.example/ack/abc")
    for part in ("红色预警", "某某化工有限公司", "AT-2001", "25 mg/m3", "限值 20", "2026-11-23 16:00:00",
                 "https://hw.example/ack/abc"):
        assert part in r.text, part
    long = Renderer(PARK, {"body": "${detail}" * 8}).render(p, "https://hw.example/ack/" + "x" * 40)
    sms = Renderer(PARK).sms(long)
    assert len(sms) <= SMS_MAX and sms.endswith("x" * 40)


def test_ack_links_are_signed_and_expire() -> None:
    s = LinkSigner(b"0123456789abcdef0123")
    tok = s.sign(42, T0 + timedelta(hours=1))
    assert s.verify(tok, T0) == 42
    with pytest.raises(BadLink, match="expired"):
        s.verify(tok, T0 + timedelta(hours=2))
    with pytest.raises(BadLink, match="signature"):
        LinkSigner(b"another-secret-of-16+").verify(tok, T0)
    with pytest.raises(BadLink):
        s.verify("garbage", T0)


def test_operators_can_rewrite_templates_from_the_site_file() -> None:
    from alerting.messages import TEMPLATES
    from park.errors import SiteFileError
    from park.site import TEMPLATE_NAMES
    from tests.site_helpers import variant

    assert set(TEMPLATES) == set(TEMPLATE_NAMES)
    text = variant('  wecom: {base_url: "https://qyapi.weixin.qq.com"}',
                   '  wecom: {base_url: "https://qyapi.weixin.qq.com"}\n'
                   '  templates: {title: "[${colour}] ${enterprise} 请立即处置"}')
    park = Park.from_site(parse_site(text, environ={}))
    [p] = [p for p in Escalator(park).on_event(ev(AlarmEventKind.RAISED, Severity.RED)) if p.unit == "E001"]
    r = Renderer(park, park.site.channels.templates).render(p, "")
    assert r.title == "[红色] 某某化工有限公司 请立即处置"
    with pytest.raises(SiteFileError, match="unknown message template 'headline'"):
        parse_site(text.replace("templates: {title:", "templates: {headline:"), environ={})


def test_deadlines_count_from_when_hazardwatch_noticed_the_alarm_not_the_readings_time() -> None:
    # a reading stamped 1970 (or three hours late) arrives at T0: one message per recipient, reminders from T0
    for stamped in (datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), T0 - timedelta(hours=3)):
        esc = Escalator(PARK)
        old = AlarmEvent(alarm_id=9, kind=AlarmEventKind.RAISED, ts=stamped, enterprise="E001", rule="high",
                         severity=Severity.RED, sensor_id=2, tag="AT-2001", value=25.0, limit=20.0, message="m")
        plans = esc.on_event(old, now=T0)
        assert who(plans) == [("enterprise", "immediate"), ("town", "immediate")]
        assert len({p.key for p in plans}) == len(plans)
        assert all(p.due_at == T0 for p in plans)
        assert esc.on_tick(T0 + timedelta(minutes=4)) == []
        assert who(esc.on_tick(T0 + timedelta(minutes=5)))[0] == ("district", "then-district")
        # noticed_at, when the rule stage sets it, wins over the clock passed in
        esc2 = Escalator(PARK)
        esc2.on_event(AlarmEvent(alarm_id=9, kind=AlarmEventKind.RAISED, ts=stamped, enterprise="E001", rule="high",
                                 severity=Severity.RED, noticed_at=T0), now=T0 + timedelta(hours=1))
        assert esc2.next_wakeup(T0) == T0 + timedelta(minutes=5)


def test_a_late_tick_sends_one_reminder_the_latest_due_never_a_burst() -> None:
    # red reminds every 5 min; hazardwatch was away for an hour: one reminder (repeat-12), not twelve
    esc = Escalator(PARK)
    esc.on_event(ev(AlarmEventKind.RAISED, Severity.RED), now=T0)
    late = esc.on_tick(T0 + timedelta(minutes=61))
    assert who(late) == [("district", "then-district"), ("enterprise", "repeat-12"), ("town", "repeat-12")]
    assert len([p for p in late if p.unit == "E001"]) == 1
    assert esc.on_tick(T0 + timedelta(minutes=62)) == []
    assert who(esc.on_tick(T0 + timedelta(minutes=65)))[-1] == ("town", "repeat-13")


def test_two_contacts_with_one_name_in_a_unit_are_refused() -> None:
    from park.errors import SiteFileError
    from tests.site_helpers import variant

    two = variant('contacts: [{name: 张工, phone: "13800000003", channels: [sms]}]',
                  'contacts: [{name: 张工, phone: "13800000003", channels: [sms]},\n'
                  '                       {name: 张工, phone: "13800000009", channels: [sms]}]')
    with pytest.raises(SiteFileError, match="two contacts named 张工 in unit E001"):
        parse_site(two, environ={})
    same_phone = two.replace('{name: 张工, phone: "13800000009"', '{name: 李工, phone: "13800000003"')
    with pytest.raises(SiteFileError, match="same phone or WeCom user"):
        parse_site(same_phone, environ={})
    # two people in one unit: two keys, so the second person is told too
    ok = two.replace('{name: 张工, phone: "13800000009"', '{name: 李工, phone: "13800000009"')
    plans = Escalator(Park.from_site(parse_site(ok, environ={}))).on_event(ev(AlarmEventKind.RAISED, Severity.BLUE))
    assert sorted(p.key for p in plans) == ["7/E001/13800000003/sms/immediate", "7/E001/13800000009/sms/immediate"]


def test_a_burst_of_raises_costs_each_raise_its_own_alarm_not_a_pass_over_all_open_alarms() -> None:
    # 2,000 alarms raised together (a gateway's sensors all going stale): planning each raise looked at
    # every open alarm, 2 million steps that held the event loop for seconds; each raise advances its own
    esc = Escalator(PARK)
    looked = [0]
    advance = esc._advance

    def counted(tr, now):  # type: ignore[no-untyped-def]
        looked[0] += 1
        return advance(tr, now)

    esc._advance = counted  # type: ignore[method-assign]
    for i in range(2000):
        plans = esc.on_event(ev(AlarmEventKind.RAISED, Severity.RED, alarm_id=i + 1), now=T0)
        assert who(plans) == [("enterprise", "immediate"), ("town", "immediate")]
    assert looked[0] == 2000
    # the tick still advances every alarm: the district is told of each after 5 minutes
    later = esc.on_tick(T0 + timedelta(minutes=5))
    assert len({p.event.alarm_id for p in later if p.step == "then-district"}) == 2000
