"""Acknowledgement links from SMS and WeCom: GET shows the alarm, POST acknowledges as the recipient.

The link names whom it was sent to (``alerting.links``); acknowledging records that person,
never a typed name, so a forwarded link still says who was told. A link of a closed alarm, an
expired, forged or malformed one changes nothing and says so (400 / 410), never a server error.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from alerting.errors import BadLink
from alerting.links import LinkClaim
from hazardwatch.api import queries
from hazardwatch.api.context import ApiContext, Ctx
from park.types import Severity, to_shanghai
from rules.errors import AlarmNotFound, InvalidTransition

router = APIRouter(include_in_schema=False)

REASONS = {"expired": "链接已过期", "signature does not match": "链接无效（签名不符）", "malformed": "链接格式错误",
           "malformed expiry": "链接有效期格式错误"}


def recipient(ctx: ApiContext, claim: LinkClaim) -> tuple[str, str]:
    """(who, unit name) the link was sent to, from the unit's contacts as the site file has them now."""
    u = ctx.park.units.get(claim.unit)
    if u is None:
        return (f"{claim.unit} 的联系人" if claim.unit else "短信/企业微信收件人"), claim.unit
    fp = claim.fingerprint
    for c in u.contacts:
        for addr in (c.phone, c.wecom_user):
            if addr and fp and ctx.links.fingerprint(addr) == fp:
                return c.name, u.name
    if u.robot_key and fp and ctx.links.fingerprint(u.robot_key) == fp:
        return "企业微信群", u.name
    return "联系人（已不在站点文件中）", u.name


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=zh-CN><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font:18px/1.5 'Noto Sans CJK SC','Microsoft YaHei',sans-serif;margin:0;padding:1em;max-width:40em;"
        "background:#f4f6f8;color:#111}h1{font-size:1.3em;margin:.2em 0 .6em}"
        ".card{background:#fff;border-radius:8px;padding:1em;box-shadow:0 1px 3px #0002}"
        ".sev{display:inline-block;padding:.15em .6em;border-radius:4px;color:#fff;font-weight:bold;white-space:nowrap}"
        ".sev-red{background:#c62828}.sev-orange{background:#e65100}.sev-yellow{background:#f9a825;color:#111}"
        ".sev-blue{background:#1565c0}.muted{color:#555}"
        "button{display:block;width:100%;font-size:1.15em;padding:.8em;margin-top:1em;border:0;border-radius:8px;"
        "background:#c62828;color:#fff}</style>"
        f"<h1>{html.escape(title)}</h1><div class=card>{body}</div></html>", status)


def _alarm_html(row: dict[str, Any]) -> str:
    sev = Severity(row["severity"])
    shape = {"red": "▲", "orange": "◆", "yellow": "●", "blue": "■"}[sev.value]
    when = to_shanghai(row["raised_at"]).strftime("%Y-%m-%d %H:%M:%S")
    return (f"<p><span class='sev sev-{sev.value}'>{shape} {sev.colour_zh}·{sev.zh}</span> "
            f"<b>{html.escape(row['enterprise_name'] or row['enterprise'])}</b></p>"
            f"<p>{html.escape(row['message'] or '')}</p><p class=muted>发生时间：{when}</p>")


async def _verified(ctx: ApiContext, token: str) -> LinkClaim | HTMLResponse:
    try:
        return ctx.links.claim(token, ctx.clock.now())
    except BadLink as e:
        why = REASONS.get(e.reason, "链接无效")
        return _page("链接无效", f"<p>{why}：请登录值班平台处理，或联系园区值班室。</p>", 400)


@router.get("/ack/{token}", response_class=HTMLResponse)
async def ack_page(token: str, ctx: Ctx) -> HTMLResponse:
    claim = await _verified(ctx, token)
    if isinstance(claim, HTMLResponse):
        return claim
    async with ctx.pool.connection() as conn:
        row = await queries.alarm(conn, claim.alarm_id)
    if row is None:
        return _page("预警不存在", "<p>该预警不存在。</p>", 404)
    who, unit_name = recipient(ctx, claim)
    body = _alarm_html(row) + f"<p class=muted>本链接发给：{html.escape(who)}（{html.escape(unit_name)}）</p>"
    if row["state"] == "closed":
        return _page("预警已关闭", body + "<p>该预警已处置关闭，链接已失效。</p>", 410)
    if row["acked_at"] is not None:
        return _page("预警已确认", body + f"<p>已由 {html.escape(row['acked_by'] or '')} 确认。</p>")
    body += (f"<form method=post><button type=submit>我是{html.escape(who)}，确认收到并处置</button></form>"
             "<p class=muted>确认后，后续升级通知停止；确认人记录为本链接的收件人。</p>")
    return _page("确认预警", body)


@router.post("/ack/{token}", response_class=HTMLResponse)
async def ack_by_link(token: str, ctx: Ctx) -> HTMLResponse:
    claim = await _verified(ctx, token)
    if isinstance(claim, HTMLResponse):
        return claim
    async with ctx.pool.connection() as conn:
        row = await queries.alarm(conn, claim.alarm_id)
    if row is None:
        return _page("预警不存在", "<p>该预警不存在。</p>", 404)
    if row["state"] == "closed":
        return _page("预警已关闭", _alarm_html(row) + "<p>该预警已处置关闭，链接已失效。</p>", 410)
    who, unit_name = recipient(ctx, claim)
    by = f"{who}（{unit_name}）"
    try:
        await ctx.commands.ack(claim.alarm_id, by, "通过短信/企业微信链接确认")
    except (AlarmNotFound, InvalidTransition) as e:
        return _page("无需确认", f"<p>{html.escape(str(e))}</p>", 409)
    async with ctx.pool.connection() as conn:
        await queries.audit(conn, None, by, "ack", f"alarm:{claim.alarm_id}",
                            {"via": "link", "unit": claim.unit, "fingerprint": claim.fingerprint.hex()},
                            unit=claim.unit or "link", token_name="ack-link")
    return _page("已确认", _alarm_html(row) + f"<p>已由 {html.escape(by)} 确认，后续升级通知已停止。</p>")
