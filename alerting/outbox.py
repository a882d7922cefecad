"""The durable outbox: every planned message is a row before it is sent, every attempt is recorded.

A row is claimed (``FOR UPDATE SKIP LOCKED``, status ``sending``) in one transaction and its
outcome written in another. A crash between the two leaves it ``sending``; on restart such rows
are sent again with the same idempotency key, which the contract's HTTP SMS gateway (``id``)
and the webhook (``Idempotency-Key``) use to drop the repeat. For vendors without an
idempotency id (WeCom) that window — a crash after the vendor answered and before the commit —
is the only way a message can repeat.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from alerting.channels.base import Channel, OutMessage
from alerting.errors import ChannelError
from alerting.escalation import Planned
from alerting.links import LinkSigner
from alerting.messages import Renderer
from alerting.metrics import AlertingMetrics
from park.model import Park
from park.types import LEVELS, to_shanghai

log = logging.getLogger("hazardwatch.alerting")

MAX_ATTEMPTS = 5
LINK_VALID = timedelta(days=3)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    key: str
    alarm_id: int | None
    unit: str
    contact: str
    channel: str
    step: str
    payload: dict[str, Any]
    attempts: int


def payload_of(p: Planned, park: Park, renderer: Renderer, signer: LinkSigner, public_url: str) -> dict[str, Any]:
    link = f"{public_url}/ack/{signer.sign(p.alarm_id, p.due_at + LINK_VALID, p.unit, p.address)}" \
        if p.alarm_id > 0 else ""
    r = renderer.render(p, link)
    ev = p.event
    ent = park.enterprises.get(ev.enterprise)
    alarm = {"id": ev.alarm_id, "enterprise": ev.enterprise, "enterprise_name": ent.name if ent else ev.enterprise,
             "tag": ev.tag, "rule": ev.rule, "severity": ev.severity.value, "colour": ev.severity.colour_zh,
             "value": ev.value, "limit": ev.limit, "message": ev.message,
             "time": to_shanghai(ev.ts).strftime("%Y-%m-%d %H:%M:%S"), "link": link, "step": p.step}
    text = renderer.sms(r) if p.channel == "sms" else r.text
    return {"address": p.address, "level": p.level, "title": r.title, "text": text, "markdown": r.markdown,
            "alarm": alarm}


async def enqueue(conn: AsyncConnection, rows: Sequence[tuple[Planned, dict[str, Any]]]) -> int:
    """Insert planned messages; one already planned (same idempotency key) is left alone."""
    n = 0
    for p, payload in rows:
        cur = await conn.execute(
            "INSERT INTO outbox (idempotency_key, alarm_id, unit_code, contact, channel, step, payload, due_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING",
            (p.key, p.alarm_id if p.alarm_id > 0 else None, p.unit, p.contact, p.channel, p.step,
             json.dumps(payload, ensure_ascii=False, default=str), p.due_at),
        )
        n += cur.rowcount
    levels: dict[int, int] = {}
    for p, _ in rows:
        if p.alarm_id > 0 and p.step not in ("cleared", "resolved"):
            levels[p.alarm_id] = max(levels.get(p.alarm_id, 0), LEVELS.index(p.level))
    for alarm_id, lv in levels.items():
        await conn.execute(
            "UPDATE alarms SET escalation_level = %s WHERE id = %s AND (escalation_level IS NULL OR"
            " array_position(ARRAY['enterprise','town','district'], escalation_level) < %s)",
            (LEVELS[lv], alarm_id, lv + 1),
        )
    return n


class OutboxWorker:
    """Claims due messages, sends them, records every attempt; retries with backoff; falls back."""

    def __init__(self, pool: AsyncConnectionPool, channels: Mapping[str, Channel], park: Park,
                 metrics: AlertingMetrics) -> None:
        self.pool = pool
        self.channels = channels
        self.park = park
        self.metrics = metrics

    async def recover(self) -> int:
        """Rows left ``sending`` by a crash go out again (with the same idempotency key)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("UPDATE outbox SET status = 'pending' WHERE status = 'sending'")
            return cur.rowcount

    async def claim(self, now: datetime, limit: int = 50) -> list[Claimed]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE outbox SET status = 'sending', attempts = attempts + 1 WHERE id IN ("
                " SELECT id FROM outbox WHERE status = 'pending' AND due_at <= %s ORDER BY due_at, id"
                " FOR UPDATE SKIP LOCKED LIMIT %s)"
                " RETURNING id, idempotency_key, alarm_id, unit_code, contact, channel, step, payload, attempts",
                (now, limit),
            )
            rows = await cur.fetchall()
        return [Claimed(*r) for r in sorted(rows, key=lambda r: r[0])]

    async def deliver(self, c: Claimed, now: datetime) -> str:
        """Send one claimed message and record the attempt; return the outcome."""
        p = c.payload
        ch = self.channels.get(c.channel)
        t0 = time.perf_counter()
        retry_at: datetime | None = None
        fallback = False
        try:
            if ch is None:
                raise ChannelError(c.channel, "channel not configured", permanent=True)
            receipt = await ch.send(OutMessage(c.key, c.contact, p.get("address", ""), p.get("title", ""),
                                               p.get("text", ""), p.get("markdown", ""), p.get("alarm", {})))
            outcome, detail, status = "sent", receipt, "sent"
        except ChannelError as e:
            detail = str(e)
            last = e.permanent or c.attempts >= MAX_ATTEMPTS
            outcome = "rate_limited" if e.rate_limited else "failed"
            status = "failed" if last else "pending"
            if not last:
                backoff = e.retry_after or min(300.0, 2.0 ** c.attempts) * random.uniform(0.5, 1.0)
                retry_at = now + timedelta(seconds=backoff)
            fallback = last
        except Exception as e:  # a channel bug must not stop the worker; it counts as a failed attempt
            detail, outcome, status = f"{type(e).__name__}: {e}", "failed", "pending"
            retry_at = now + timedelta(seconds=min(300.0, 2.0 ** c.attempts))
        self.metrics.send_seconds.labels(c.channel).observe(time.perf_counter() - t0)
        self.metrics.attempts.labels(c.channel, outcome).inc()
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO notifications (outbox_id, alarm_id, idempotency_key, unit_code, contact, channel, step,"
                " attempt, ts, outcome, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (c.id, c.alarm_id, c.key, c.unit, c.contact, c.channel, c.step, c.attempts, now, outcome,
                 detail[:1000]),
            )
            await conn.execute(
                "UPDATE outbox SET status = %s, due_at = coalesce(%s, due_at),"
                " sent_at = CASE WHEN %s = 'sent' THEN %s ELSE sent_at END WHERE id = %s",
                (status, retry_at, status, now, c.id),
            )
            if fallback:
                await self._fall_back(conn, c, now)
        if outcome != "sent":
            log.warning("%s to %s (%s) %s: %s", c.channel, c.contact, c.unit, outcome, detail)
        return outcome

    async def _fall_back(self, conn: AsyncConnection, c: Claimed, now: datetime) -> None:
        """After repeated failure, the contact's next channel."""
        unit = self.park.units.get(c.unit)
        if unit is None:
            return
        for contact in unit.contacts:
            if contact.name != c.contact or c.channel not in contact.channels:
                continue
            chans = list(contact.channels)
            nxt = [str(x) for x in chans].index(c.channel) + 1
            if nxt >= len(chans):
                return
            ch = chans[nxt]
            payload = dict(c.payload) | {"address": contact.phone if ch == "sms" else (contact.wecom_user or "")}
            await conn.execute(
                "INSERT INTO outbox (idempotency_key, alarm_id, unit_code, contact, channel, step, payload, due_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING",
                (c.key.rsplit("/", 2)[0] + f"/{ch}/{c.step}", c.alarm_id, c.unit, c.contact, ch, c.step,
                 json.dumps(payload, ensure_ascii=False), now),
            )
            return
