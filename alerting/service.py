"""The alerting stage as a service: alarm events → escalation plan → outbox rows → channels.

Three tasks: events from the rule stage, a tick for timed steps and reminders (driven by the
injected clock), and the outbox worker. Everything planned is a row before anything is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import datetime, timedelta

import httpx
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerting.channels.base import Channel
from alerting.channels.console import ConsoleChannel
from alerting.channels.sms_aliyun import AliyunSms
from alerting.channels.sms_http import HttpSms
from alerting.channels.sms_tencent import TencentSms
from alerting.channels.webhook import Webhook
from alerting.channels.wecom_app import WecomApp
from alerting.channels.wecom_robot import WecomRobot
from alerting.escalation import Escalator, Planned
from alerting.links import LinkSigner
from alerting.messages import Renderer
from alerting.metrics import AlertingMetrics
from alerting.outbox import OutboxWorker, enqueue, payload_of
from park.clock import Clock
from park.model import Park
from park.settings import Settings
from park.site import SmsAliyun, SmsHttp, SmsTencent
from park.types import LEVELS, AlarmEvent, AlarmEventKind, Level, Severity

log = logging.getLogger("hazardwatch.alerting")
POLL = 0.2  # seconds between looks at the clock and the outbox
FLOOD_SUMMARY_EVERY = timedelta(minutes=5)


def build_channels(park: Park, client: httpx.AsyncClient) -> dict[str, Channel]:
    ch = park.site.channels
    out: dict[str, Channel] = {"wecom_robot": WecomRobot(ch.wecom, client), "console": ConsoleChannel()}
    if isinstance(ch.sms, SmsHttp):
        out["sms"] = HttpSms(ch.sms, client)
    elif isinstance(ch.sms, SmsAliyun):
        out["sms"] = AliyunSms(ch.sms, client)
    elif isinstance(ch.sms, SmsTencent):
        out["sms"] = TencentSms(ch.sms, client)
    if ch.wecom.corp_id and ch.wecom.secret and ch.wecom.agent_id:
        out["wecom"] = WecomApp(ch.wecom, client)
    if ch.webhook is not None:
        out["webhook"] = Webhook(ch.webhook, client)
    return out


class AlertingService:
    def __init__(self, *, settings: Settings, park: Park, pool: AsyncConnectionPool, clock: Clock,
                 inbox: asyncio.Queue[AlarmEvent], registry: CollectorRegistry, signer: LinkSigner | None = None,
                 channels: dict[str, Channel] | None = None) -> None:
        self.settings = settings
        self.park = park
        self.pool = pool
        self.clock = clock
        self.inbox = inbox
        self.metrics = AlertingMetrics(registry)
        self.escalator = Escalator(park, console=park.site.channels.console)
        self.renderer = Renderer(park, park.site.channels.templates)
        self.signer = signer or LinkSigner(b"hazardwatch-unset-link-secret!!")
        self._channels = channels
        self._wake = asyncio.Event()
        self.flood_buffer: dict[tuple[str, Level], list[Planned]] = defaultdict(list)
        self._last_flood_summary: datetime | None = None
        self.restored = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient() as client:
            channels = self._channels if self._channels is not None else build_channels(self.park, client)
            worker = OutboxWorker(self.pool, channels, self.park, self.metrics)
            resent = await worker.recover()
            n = await self.restore()
            self.restored.set()
            log.info("alerting running: %d open alarms in escalation, %d messages to resend after a stop, "
                     "channels: %s", n, resent, ", ".join(sorted(channels)))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._events(), name="alerting-events")
                tg.create_task(self._ticks(), name="alerting-ticks")
                tg.create_task(self._work(worker), name="alerting-outbox")

    async def _events(self) -> None:
        while True:
            ev = await self.inbox.get()
            await self._plan(self.escalator.on_event(ev))

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            now = self.clock.now()
            await self._plan(self.escalator.on_tick(now))
            await self._flood_summaries(now)

    async def _work(self, worker: OutboxWorker) -> None:
        while True:
            claimed = await worker.claim(self.clock.now())
            if claimed:
                await asyncio.gather(*(worker.deliver(c, self.clock.now()) for c in claimed))
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), POLL)
            except TimeoutError:
                pass

    async def _plan(self, planned: list[Planned]) -> None:
        if not planned:
            return
        rows = []
        for p in planned:
            # in a flood, one summary per unit instead of one message per alarm; red is never held back
            if p.event.flood and p.event.severity is not Severity.RED:
                self.flood_buffer[(p.unit, p.level)].append(p)
                self.metrics.flood_held.inc()
                continue
            rows.append((p, payload_of(p, self.park, self.renderer, self.signer, self.settings.public_url)))
        if not rows:
            return
        async with self.pool.connection() as conn, conn.transaction():
            await enqueue(conn, rows)
        for p, _ in rows:
            self.metrics.planned.labels(p.channel, p.step.split("-")[0]).inc()
        self._wake.set()

    async def _flood_summaries(self, now: datetime) -> None:
        if not self.flood_buffer:
            return
        if self._last_flood_summary is not None and now - self._last_flood_summary < FLOOD_SUMMARY_EVERY:
            return
        self._last_flood_summary = now
        n = int(now.timestamp())
        rows = []
        for (unit_code, level), items in list(self.flood_buffer.items()):
            alarms = {p.alarm_id for p in items}
            first = items[0].event
            unit = self.park.units[unit_code]
            worst = max((p.event.severity for p in items), key=lambda s: s.rank)
            summary = AlarmEvent(alarm_id=0, kind=AlarmEventKind.FLOOD_START, ts=now, enterprise=first.enterprise,
                                 rule="flood", severity=worst,
                                 message=f"{len(alarms)}条预警（{len(items)}条通知）合并："
                                 + "；".join(sorted({p.event.message for p in items})[:5]),
                                 detail={"count": len(alarms)})
            for p in self.escalator.recipients(summary, unit, level, f"flood-{n}", now):
                rows.append((p, payload_of(p, self.park, self.renderer, self.signer, self.settings.public_url)))
        self.flood_buffer.clear()
        if rows:
            async with self.pool.connection() as conn, conn.transaction():
                await enqueue(conn, rows)
            self._wake.set()

    async def restore(self) -> int:
        """Rebuild escalation for open alarms from ``alarms`` and what the outbox already holds.

        An open, unacknowledged alarm with nothing planned yet was stored by the rule stage just
        before a crash: it is planned now as if just raised (idempotency keys drop any repeat)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, enterprise_code, rule, severity, raised_at, sensor_id, tag, value, limit_value, message,"
                " acked_at IS NOT NULL OR suppressed, flood FROM alarms WHERE state <> 'closed'")
            alarms = await cur.fetchall()
            cur = await conn.execute(
                "SELECT alarm_id, step, payload->>'level' FROM outbox WHERE alarm_id IN"
                " (SELECT id FROM alarms WHERE state <> 'closed')")
            planned = await cur.fetchall()
        steps: dict[int, set[str]] = defaultdict(set)
        told: dict[int, set[str]] = defaultdict(set)
        for alarm_id, step, level in planned:
            steps[alarm_id].add(step)
            if step not in ("cleared", "resolved") and level:
                told[alarm_id].add(level)
        unplanned: list[AlarmEvent] = []
        for r in alarms:
            ev = AlarmEvent(alarm_id=r[0], kind=AlarmEventKind.RAISED, ts=r[4], enterprise=r[1], rule=r[2],
                            severity=Severity(r[3]), sensor_id=r[5], tag=r[6], value=r[7], limit=r[8],
                            message=r[9], flood=r[11])
            if not r[10] and "immediate" not in steps[r[0]]:
                unplanned.append(ev)
                continue
            done = {s for s in steps[r[0]] if s.startswith("then-")}
            repeats = max((int(s.split("-")[1]) for s in steps[r[0]] if s.startswith("repeat-")), default=0)
            self.escalator.restore(ev, [lv for lv in LEVELS if lv in told[r[0]]], done, repeats, bool(r[10]))
        for ev in unplanned:
            await self._plan(self.escalator.on_event(ev))
        if unplanned:
            log.warning("planned %d alarm(s) raised just before the last stop and never escalated", len(unplanned))
        return len(alarms)
