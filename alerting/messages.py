"""Message text (docs/contract.md §4): Chinese by default, naming colour, enterprise, sensor, value, limit, time, link.

Templates are ``string.Template`` strings; an operator can replace any of them. SMS text is kept
within two segments (67 characters each when concatenated): the detail is shortened, the link never.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

from alerting.escalation import Planned
from park.model import Park
from park.types import to_shanghai

SMS_MAX = 134  # two concatenated segments of 67 characters (UCS-2)

TEMPLATES = {
    "title": "【${colour}预警·${grade}】${enterprise}",
    "body": "${detail}",
    "time": "时间：${time}",
    "step_immediate": "",
    "step_upgrade": "预警已升级为${colour}",
    "step_then": "${lower}未在${minutes}分钟内确认，现报${level_zh}",
    "step_repeat": "第${n}次提醒：仍未确认",
    "step_cleared": "【已恢复】数值已回到正常范围",
    "step_resolved": "【处置完毕】${by}：${action}",
    "step_flood": "预警泛滥：${count}条预警合并发送",
    "step_unreachable": "【无法送达】${unreachable}",
    "ack": "确认处置：${link}",
}
LEVEL_ZH = {"enterprise": "企业", "town": "镇/街道", "district": "区应急管理局"}


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    text: str  # plain text (SMS, console, app message)
    markdown: str  # WeCom markdown
    link: str


class Renderer:
    def __init__(self, park: Park, templates: dict[str, str] | None = None) -> None:
        self.park = park
        self.t = {k: Template(v) for k, v in (TEMPLATES | (templates or {})).items()}

    def render(self, p: Planned, link: str) -> Rendered:
        ev = p.event
        sev = ev.severity
        vals = {
            "colour": sev.colour_zh, "grade": sev.zh, "enterprise": self.park.scope_name(ev.enterprise),
            "detail": ev.message or ev.rule, "time": to_shanghai(ev.ts).strftime("%Y-%m-%d %H:%M:%S"),
            "link": link, "by": ev.by or "", "action": str(ev.detail.get("action", "")),
            "n": p.step.split("-")[-1], "level_zh": LEVEL_ZH.get(p.level, p.level),
            "lower": "企业" if p.level == "town" else "企业及镇/街道",
            "minutes": self._after_minutes(ev.severity, p.level),
            "count": str(ev.detail.get("count", "")),
            "unreachable": str(ev.detail.get("unreachable", "")),
        }
        kind = p.step.split("-")[0]
        step_t = self.t.get(f"step_{kind}")
        step = step_t.safe_substitute(vals) if step_t else ""
        title = self.t["title"].safe_substitute(vals)
        body = self.t["body"].safe_substitute(vals)
        time = self.t["time"].safe_substitute(vals)
        ack = self.t["ack"].safe_substitute(vals) if link and kind not in ("cleared", "resolved") else ""
        text = "\n".join(x for x in (title, step, body, time, ack) if x)
        colour = {"red": "warning", "orange": "warning", "yellow": "comment", "blue": "info"}[sev.value]
        md_lines = [f"**<font color=\"{colour}\">{title}</font>**"]
        if step:
            md_lines.append(f"> {step}")
        md_lines += [f"> {body}", f"> {time}"]
        if ack:
            md_lines.append(f"[点击确认处置]({link})")
        return Rendered(title, text, "\n".join(md_lines), link)

    def _after_minutes(self, sev: object, level: str) -> str:
        pol = self.park.site.escalation.get(sev)  # type: ignore[call-overload]
        for step in pol.then if pol else []:
            if step.level == level:
                return f"{step.after.total_seconds() / 60:g}"
        return "规定"

    def sms(self, r: Rendered) -> str:
        """The text within two SMS segments; the detail gives way, the link stays."""
        if len(r.text) <= SMS_MAX:
            return r.text
        lines = r.text.split("\n")
        tail = lines[-1] if r.link and r.link in lines[-1] else ""
        head = "\n".join(lines[:-1] if tail else lines)
        room = SMS_MAX - len(tail) - (1 if tail else 0)
        head = head[: max(0, room - 1)] + "…"
        return f"{head}\n{tail}" if tail else head
