"""Alarms as the duty room reads them: names rather than codes, values rounded with their unit,
the rule explained, who is responsible, and who was told when.

Tolerant of what the rule stage stores: structured facts in ``detail`` (rule, value, limit,
unit, eta, hazard source, voting detectors, ``backfilled``) are used when present; otherwise
the alarm's own columns and message.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hazardwatch.api.context import jsonable
from park.model import Park, SensorSpec
from park.types import LEVELS, PARK_SCOPE, to_shanghai
from park.units import format_rate, format_value, precision_for, unit_text
from park.wording import alarm_text, duration

LEVEL_ZH = {"enterprise": "企业", "town": "镇/街道", "district": "区"}
CHANNEL_ZH = {"sms": "短信", "wecom": "企业微信", "wecom_robot": "企业微信群", "webhook": "平台推送",
              "console": "控制台"}
OUTCOME_ZH = {"sent": "已送达", "failed": "失败", "rate_limited": "限流重试", "skipped": "跳过"}
STEP_ZH = {"immediate": "首次通知", "upgrade": "升级通知", "cleared": "恢复通知", "resolved": "处置通知"}
LEVEL_NAME = {"HH": "高高报", "H": "高报", "L": "低报", "LL": "低低报"}
GAS_LEVEL = {"HH": "二级报警", "H": "一级报警"}


def _hazard_source(park: Park, enterprise: str, code: str | None) -> dict[str, Any] | None:
    ent = park.enterprises.get(enterprise)
    if ent is None or not code:
        return None
    for hs in ent.hazard_sources:
        if hs.code == code:
            return {"code": hs.code, "name": hs.name, "grade": hs.grade}
    return {"code": code, "name": code, "grade": None}


def _members(park: Park, enterprise: str, tags: Any) -> list[dict[str, str]]:
    if isinstance(tags, str):
        tags = [t for t in tags.split(",") if t]
    if not isinstance(tags, list):
        return []
    out = []
    for t in tags:
        s = park.sensor(enterprise, str(t))
        out.append({"tag": str(t), "name": s.display_name if s else str(t)})
    return out


def explain(row: dict[str, Any], spec: SensorSpec | None, members: list[dict[str, str]],
            hs: dict[str, Any] | None) -> str:
    """One sentence: what crossed what, or when the limit will be reached."""
    d = row.get("detail") or {}
    rule = row.get("rule") or d.get("rule")
    prec = spec.precision if spec else precision_for(row.get("kind"))
    unit = (spec.unit if spec else None) or row.get("unit") or d.get("unit")
    v, lim = row.get("value"), row.get("limit")
    name = spec.display_name if spec else (row.get("sensor_name") or row.get("tag") or "")
    if rule in ("high", "low"):
        lvl = str(d.get("level", ""))
        gas = spec is not None and spec.kind.is_gas and spec.kind.value != "oxygen"
        word = (GAS_LEVEL if gas else LEVEL_NAME).get(lvl, LEVEL_NAME.get(lvl, "越限"))
        cmp = "高于" if rule == "high" else "低于"
        return f"{name}{word}：当前 {format_value(v, prec, unit)}，{cmp}限值 {format_value(lim, prec, unit)}"
    if rule == "rate":
        per = d.get("per_min")
        return (f"{name}变化过快：每分钟 {format_rate(per, prec, unit)}，"
                f"限值每分钟 {format_rate(lim, prec, unit)}")
    if rule == "trend":
        eta = d.get("eta_s", d.get("eta_seconds"))
        mins = f"约 {round(float(eta) / 60)} 分钟后" if isinstance(eta, int | float) else "不久后"
        return (f"{name}趋势预警：当前 {format_value(v, prec, unit)}，按当前速率{mins}"
                f"达到限值 {format_value(lim, prec, unit)}")
    if rule == "vote":
        where = hs["name"] if hs else "危险源"
        who = "、".join(m["name"] for m in members) or "多个探测器"
        k = int(lim) if isinstance(lim, int | float) else 2
        return f"{where}：{len(members) or k} 个气体探测器同时报警（{who}），确认泄漏"
    if rule and (d.get("name") or d.get("tag")):
        # every other rule in the one wording the messages use, at this sensor's precision; the
        # board marks late data itself, so without the notes
        return alarm_text(rule, {k: x for k, x in d.items() if k != "backfilled"}
                          | {"precision": prec, "unit": unit}, v, lim)
    return str(row.get("message") or "")


def clock_text(offset_s: Any) -> str | None:
    """A gateway clock offset as people say it: "慢 10 分钟", "快 3 分钟"."""
    if not isinstance(offset_s, int | float):
        return None
    return f"{'慢' if offset_s < 0 else '快'} {duration(abs(offset_s))}"


def alarm_json(park: Park, row: dict[str, Any]) -> dict[str, Any]:
    """The contract's alarm fields plus what the board shows, JSON-ready."""
    out = jsonable(row)
    d = row.get("detail") or {}
    spec = park.by_id.get(row["sensor_id"]) if row.get("sensor_id") is not None else None
    if spec is None and row.get("tag"):
        spec = park.sensor(row["enterprise"], row["tag"])
    prec = spec.precision if spec else precision_for(row.get("kind"))
    unit = (spec.unit if spec else None) or row.get("unit")
    hs = _hazard_source(park, row["enterprise"], (spec.hazard_source if spec else None) or d.get("hazard_source"))
    members = _members(park, row["enterprise"], d.get("tags") or d.get("detectors"))
    out |= {
        "enterprise_name": row.get("enterprise_name") or park.scope_name(row["enterprise"]),
        "sensor_name": spec.display_name if spec else row.get("sensor_name"),
        "precision": prec,
        "unit": unit,
        "unit_text": unit_text(unit),
        "value_text": (None if row.get("rule") in ("vote", "comm_loss", "stale") else
                       clock_text(row.get("value")) if row.get("rule") == "clock" else
                       format_value(row.get("value"), prec, unit)),
        "limit_text": (None if row.get("rule") in ("vote", "comm_loss", "stale") else
                       format_rate(row.get("limit"), prec, unit) if row.get("rule") == "rate" else
                       f"±{duration(float(row['limit']))}" if row.get("rule") == "clock"
                       and isinstance(row.get("limit"), int | float) else
                       format_value(row.get("limit"), prec, unit)),
        "hazard_source": hs,
        "members": members,
        "text": explain(row, spec, members, hs),
        "backfilled": bool(d.get("backfilled", False)),
    }
    out.pop("detail", None)
    out["detail"] = d
    return out


def responsible(park: Park, enterprise: str) -> list[dict[str, Any]]:
    """Everyone responsible for ``enterprise``, nearest first, with a number to call."""
    out = []
    units = park.park_units() if enterprise == PARK_SCOPE else park.chain(enterprise)
    for u in units:
        out.append({"unit": u.code, "unit_name": u.name, "level": u.level, "level_zh": LEVEL_ZH[u.level],
                    "contacts": [{"name": c.name, "phone": c.phone, "channels": list(c.channels)}
                                 for c in u.contacts]})
    return out


def timeline(park: Park, events: list[dict[str, Any]], notes: dict[str, Any]) -> list[dict[str, Any]]:
    """Transitions and delivery attempts in time order, in words."""
    out: list[dict[str, Any]] = []
    kinds = {"raised": "报警产生", "upgraded": "等级升高", "downgraded": "等级降低", "acked": "已确认",
             "cleared": "已恢复正常", "resolved": "已处置关闭", "shelved": "已搁置", "unshelved": "取消搁置",
             "suppressed": "已抑制", "unsuppressed": "取消抑制", "chattering": "频繁报警",
             "flood_start": "预警泛滥开始", "flood_end": "预警泛滥结束"}
    for e in events:
        if e["kind"] == "unreachable":
            # alerting could not reach a contact and told the duty room (alerting.service)
            d = e.get("detail") or {}
            u = park.units.get(str(d.get("unit", "")))
            ch = str(d.get("channel", ""))
            out.append({"ts": e["ts"], "kind": "unreachable", "unit": d.get("unit"),
                        "unit_name": u.name if u else d.get("unit"), "contact": d.get("contact"),
                        "channel": ch, "channel_zh": CHANNEL_ZH.get(ch, ch), "delivered": False,
                        "text": f"未能送达：{u.name if u else d.get('unit', '')} {d.get('contact', '')}"
                                f"（{CHANNEL_ZH.get(ch, ch)}）始终未收到通知，已报告值班室，请电话联系"})
            continue
        what = kinds.get(e["kind"], e["kind"])
        if e.get("by"):
            what += f"（{e['by']}）"
        out.append({"ts": e["ts"], "kind": "event", "text": what})
    for a in notes.get("attempts") or []:
        u = park.units.get(a["unit"])
        step = str(a.get("step") or "")
        step_zh = STEP_ZH.get(step) or ("升级通知" if step.startswith("then") else
                                        "重复提醒" if step.startswith("repeat") else
                                        "未能送达报告" if step.startswith("unreachable") else
                                        "合并通知" if step.startswith("flood") else step)
        out.append({"ts": a["ts"], "kind": "notification", "unit": a["unit"],
                    "unit_name": u.name if u else a["unit"], "level_zh": LEVEL_ZH.get(u.level, "") if u else "",
                    "contact": a["contact"], "channel": a["channel"],
                    "channel_zh": CHANNEL_ZH.get(a["channel"], a["channel"]), "step": step_zh,
                    "outcome": a["outcome"], "outcome_zh": OUTCOME_ZH.get(a["outcome"], a["outcome"]),
                    "delivered": a["outcome"] == "sent",
                    "text": f"{step_zh}：{u.name if u else a['unit']} {a['contact']}"
                            f"（{CHANNEL_ZH.get(a['channel'], a['channel'])}）"
                            f"{OUTCOME_ZH.get(a['outcome'], a['outcome'])}"})
    out.sort(key=lambda x: x["ts"] if isinstance(x["ts"], datetime) else datetime.fromisoformat(str(x["ts"])))
    return [jsonable(x) | {"time": to_shanghai(x["ts"]).strftime("%H:%M:%S")} if isinstance(x["ts"], datetime)
            else x for x in out]


__all__ = ["LEVELS", "alarm_json", "explain", "responsible", "timeline"]
