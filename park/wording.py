"""The sentence people read for an alarm, rendered from the structured facts the rule core emits.

One place for the board, SMS, WeCom and the ``message`` columns, so they all say the same thing.
The rule core never writes sentences: it puts facts in the alarm's ``detail`` (JSON, stable keys,
below) and the edge calls :func:`alarm_text` with them and the event's value and limit.

Facts (``Alarm.detail`` / ``AlarmEvent.detail``), every key optional unless the rule needs it:

=====================  ================================================================
key                    meaning
=====================  ================================================================
``name``               the sensor's display name (enterprise alarms: the enterprise's)
``tag``                the enterprise's point tag (位号)
``unit``               the sensor's unit (``%LEL``, ``mg/m3``, ``m`` …)
``kind``               the sensor kind (park.site.SensorKind value)
``precision``          decimals the sensor's values are shown with (park.units; else the kind's)
``hazard_source``      hazard source code; ``hazard_source_name`` its name (vote)
``enterprise_name``    the enterprise's name (enterprise alarms)
``level``              threshold level reached: ``HH`` ``H`` ``L`` ``LL``
``eta_s`` ``eta_at``   trend: seconds until the limit, and that moment (ISO 8601, UTC)
``slope_per_min``      trend: robust slope, unit per minute; ``target_level`` the limit's level
``direction``          trend, rate: ``up`` or ``down``
``per_min``            rate: the rate of change measured, unit per minute
``cause``              fault: ``bad_quality`` ``out_of_range`` ``flatline``;
                       comm_loss: ``gateway_offline`` ``no_data``
``range_lo/range_hi``  fault out_of_range: the instrument's range
``flat_s``             fault flatline: seconds without change
``silent_s``           stale, comm_loss no_data: seconds nothing arrived
``interval_s``         stale: the sensor's usual reporting interval
``k`` ``n`` ``above``  vote: needed, detectors in the group, detectors above first level
``detectors``          vote: the voting detectors' tags; ``detector_names`` their names
``gas_class``          vote: ``gas_combustible`` or ``gas_toxic:<GAS>``
``offset_s``           clock: the gateway's clock minus hazardwatch's, seconds; ``bound_s``
``broker``             broker: the MQTT broker (``host:port``); ``down_s`` how long unreachable
``reason``             power: ``over_capacity`` or ``load_while_stopped``
``approved_kw``        power: approved capacity; ``threshold_kw``/``baseline_kw`` when stopped
``enterprise_state``   power: ``running`` ``stopped`` ``maintenance``
``backfilled``         raised from late data (store-and-forward); ``delay_s`` how late
``after_suppression``  raised when a maintenance / stop ended with the condition present
``latching``           stays in alarm until acknowledged
=====================  ================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from park.units import format_rate, format_value, precision_for

_GENERIC = {2: "高高报", 1: "高报", -1: "低报", -2: "低低报"}
_LEVELS = {"HH": 2, "H": 1, "L": -1, "LL": -2}
_KIND_CLASS = {"gas_combustible": "可燃气体", "gas_toxic": "有毒气体"}


def num(v: Any) -> str:
    """A value as people write it: no float noise, at most 4 significant digits after rounding."""
    if v is None:
        return "—"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{f:.4g}" if abs(f) < 1e6 else f"{f:.0f}"


def duration(seconds: float) -> str:
    s = max(0, round(float(seconds)))
    if s < 60:
        return f"{s} 秒"
    if s < 3600:
        return f"{round(s / 60)} 分钟"
    h, m = divmod(round(s / 60), 60)
    return f"{h} 小时" + (f" {m} 分钟" if m else "")


def level_name(kind: str | None, level: str | None) -> str:
    lvl = _LEVELS.get(level or "", 0)
    if kind == "gas_combustible" and lvl > 0:
        return {1: "一级报警", 2: "二级报警"}[lvl]
    if kind == "gas_toxic" and lvl > 0:
        return {1: "一级报警(1×OEL)", 2: "二级报警(2×OEL)"}[lvl]
    if kind == "oxygen":
        return {1: "富氧报警", 2: "富氧高高报", -1: "缺氧报警", -2: "缺氧低低报"}.get(lvl, "报警")
    return _GENERIC.get(lvl, "报警")


def _who(f: Mapping[str, Any]) -> str:
    name, tag = f.get("name"), f.get("tag")
    if name and tag and name != tag:
        return f"{name}({tag})"
    return str(name or tag or "")


def alarm_text(rule: str, facts: Mapping[str, Any], value: float | None = None, limit: float | None = None) -> str:
    """The Chinese sentence for an alarm of ``rule`` with these facts, value and limit; values are
    rounded to the sensor's precision and written with their unit (park.units), as on the board."""
    f = facts
    unit = str(f.get("unit") or "")
    prec = _precision(f)

    def val(v: Any) -> str:
        return format_value(_float(v), prec, unit)

    who = _who(f)
    if rule in ("high", "low"):
        text = f"{who} {level_name(f.get('kind'), f.get('level'))}：{val(value)}，限值 {val(limit)}"
    elif rule == "trend":
        lvl = level_name(f.get("kind"), f.get("target_level"))
        text = (f"{who} 趋势预警：按当前速率约 {duration(f.get('eta_s', 0))}后达到{lvl}限值 {val(limit)}"
                f"（当前 {val(value)}）")
    elif rule == "rate":
        what = "下降过快" if f.get("direction") == "down" else "上升过快"
        per = abs(float(f.get("per_min", 0) or 0))
        text = f"{who} {what}：{format_rate(per, prec, unit)}，限值 {format_rate(_float(limit), prec, unit)}"
    elif rule == "fault":
        cause = f.get("cause")
        if cause == "flatline":
            text = f"{who} 数值 {duration(f.get('flat_s', 0))}不变，疑似仪表卡死"
        elif cause == "out_of_range":
            lo = format_value(_float(f.get("range_lo")), prec)
            text = f"{who} 超出量程 {lo}–{val(f.get('range_hi'))}：{val(value)}"
        else:
            text = f"{who} 仪表故障（质量位=坏值）"
    elif rule == "stale":
        text = f"{who} 数据中断 {duration(f.get('silent_s', 0))}"
    elif rule == "comm_loss":
        ent = f.get("enterprise_name") or f.get("name") or ""
        if f.get("cause") == "no_data":
            text = f"{ent} {duration(f.get('silent_s', 0))}无数据（通信中断）"
        else:
            text = f"{ent} 数据网关离线（通信中断）"
    elif rule == "clock":
        ent = f.get("enterprise_name") or f.get("name") or ""
        off = float(f.get("offset_s", value or 0) or 0)
        text = (f"{ent} 数据网关时钟{'慢' if off < 0 else '快'} {duration(abs(off))}"
                f"（允许 ±{duration(f.get('bound_s', limit or 0))}），请校准网关时间")
    elif rule == "broker":
        text = (f"MQTT 代理 {f.get('broker', '')} 不可达（已 {duration(f.get('down_s', 0))}），"
                "经该代理发送的网关数据收不到，请检查代理服务与网络")
    elif rule == "vote":
        cls = _KIND_CLASS.get(str(f.get("kind")), "气体")
        gas = str(f.get("gas_class", "")).partition(":")[2]
        names = "、".join(map(str, f.get("detector_names") or f.get("detectors") or []))
        source = f.get("hazard_source_name") or f.get("hazard_source", "")
        count = f"{f.get('above', num(value))}/{f.get('n', '')}"
        text = f"{source} {count} 个{gas}{cls}探测器同时报警（{names}），确认泄漏"
    elif rule == "spark":
        text = f"{who} 火花探测报警"
    elif rule == "fault_signal":
        text = f"{who} 故障信号"
    elif rule == "power":
        def kw(v: Any) -> str:
            return format_value(_float(v), prec, "kW")
        if f.get("reason") == "over_capacity":
            text = f"{who} 超核定负荷：{kw(value)} > {kw(f.get('approved_kw', limit))}"
        else:
            when = "检修期间" if f.get("enterprise_state") == "maintenance" else "停产期间"
            text = f"{who} {when}用电负荷 {kw(value)} 超过停产基线 {kw(f.get('threshold_kw'))}，疑似违规生产"
    else:
        text = f"{who} {rule}".strip()
    return text + notes(f)


def _precision(f: Mapping[str, Any]) -> int:
    own = f.get("precision")
    return precision_for(f.get("kind"), own if isinstance(own, int) and not isinstance(own, bool) else None)


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def notes(facts: Mapping[str, Any]) -> str:
    """What people must know about how the alarm came about: late data, the end of a suppression."""
    out = ""
    if facts.get("backfilled"):
        out += f"（补传数据，迟到 {duration(facts.get('delay_s', 0))}）"
    if facts.get("after_suppression"):
        out += "（检修/停产结束时仍存在）"
    return out
