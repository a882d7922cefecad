"""The alerting stage as a service: alarm events → escalation plan → outbox rows → channels.

Three tasks: events from the rule stage, a tick for timed steps and reminders (driven by the
injected clock), and the outbox worker. Everything planned is a row before anything is sent —
in the ``outbox`` table, or in the local journal while the database is away (``DbGate``), so a
new alarm's immediate messages go out during an outage too. A database error never ends the
stage: the work goes to the journal, the stage reports itself degraded, and the flusher writes
the journal into the database when it returns.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

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
from alerting.errors import NotLeading
from alerting.escalation import Escalator, Planned
from alerting.links import LinkSigner
from alerting.messages import Renderer
from alerting.metrics import AlertingMetrics
from alerting.outbox import (
    Claimed,
    Decision,
    LocalOutbox,
    OutboxWorker,
    Overdue,
    PgOutbox,
    Row,
    Store,
    apply_attempt,
    payload_of,
    record_event,
    upsert_local,
)
from park.clock import Clock
from park.health import Health
from park.journal import DbGate, Flusher, is_transient
from park.model import Park
from park.settings import Settings
from park.site import SmsAliyun, SmsHttp, SmsTencent
from park.types import LEVELS, AlarmEvent, AlarmEventKind, Level, Severity

log = logging.getLogger("hazardwatch.alerting")
POLL = 0.2  # seconds between looks at the clock and the outbox
IN_FLIGHT = 50  # messages being sent at once at most
EVENTS_PER_PLAN = 500  # alarm events planned together at most
FLOOD_SUMMARY_EVERY = timedelta(minutes=5)
OVERDUE_EVERY = timedelta(seconds=15)  # how often undelivered contacts are looked for
OVERDUE_REAL_MIN = 1.0  # and at least this many real seconds apart
STAGE = "alerting"


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


def register_flush(flusher: Flusher) -> None:
    """What alerting keeps in the journal, and how the flusher writes it into the database."""
    flusher.on_messages(upsert_local)
    flusher.on_entry("attempt", apply_attempt, phase=2)
    flusher.on_entry("event", record_event, phase=2)


def _reporter(o: Overdue, now: datetime, rows: list[Row], event: dict[str, Any]) -> Callable[[Store], Any]:
    return lambda s: s.report(o, now, rows, event)


class AlertingService:
    def __init__(self, *, settings: Settings, park: Park, pool: AsyncConnectionPool, clock: Clock,
                 inbox: asyncio.Queue[AlarmEvent], registry: CollectorRegistry, signer: LinkSigner | None = None,
                 channels: dict[str, Channel] | None = None, gate: DbGate | None = None,
                 health: Health | None = None, redact: Callable[[str], str] = lambda s: s,
                 may_send: Callable[[], bool] | None = None) -> None:
        self.settings = settings
        self.may_send = may_send  # asked just before each message goes out (several instances: "do I lead?")
        self.park = park
        self.pool = pool
        self.clock = clock
        self.inbox = inbox
        self.metrics = AlertingMetrics(registry)
        self.escalator = Escalator(park, console=park.site.channels.console)
        self.renderer = Renderer(park, park.site.channels.templates)
        self.signer = signer or LinkSigner(b"hazardwatch-unset-link-secret!!")
        self.gate = gate
        self.health = health or Health()
        self.health.register(STAGE)
        self.pg = PgOutbox(pool)
        self.local = LocalOutbox(gate.journal) if gate is not None else None
        self.worker = OutboxWorker(channels or {}, park, self.metrics, redact)
        self._channels = channels
        self._wake = asyncio.Event()
        self._handed: collections.deque[Claimed] = collections.deque()  # claimed as planned: to send now
        self._sending = 0  # messages out (the sender's count)
        self._reserved = 0  # room a planning write may claim into while it runs
        self._last_flood_summary: datetime | None = None
        self._last_overdue: datetime | None = None
        self._last_overdue_real = -1e9
        self.ticks_done = 0  # completed escalation passes: progress a caller can wait on
        self._recovered = False
        self.restored = asyncio.Event()

    # --- running ----------------------------------------------------------------------------------
    async def run(self) -> None:
        async with httpx.AsyncClient() as client:
            if self._channels is None:
                self.worker.channels = build_channels(self.park, client)
            resent = 0
            if self.local is not None:
                # journal messages a stopped delivery of this stage left "sending" (no other delivers them)
                resent += self.local.journal.requeue_sending()
            if not self._recovered:  # only at process start: after an in-process restart leases cover it
                resent += await self.pg.recover()
                self._recovered = True
            n = await self.restore()
            self.restored.set()
            log.info("alerting running: %d open alarms in escalation, %d messages to resend after a stop, "
                     "channels: %s", n, resent, ", ".join(sorted(self.worker.channels)))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._events(), name="alerting-events")
                tg.create_task(self._ticks(), name="alerting-ticks")
                tg.create_task(self._work(), name="alerting-outbox")

    async def _events(self) -> None:
        while True:
            # a burst of events (hundreds of alarms raised together) is planned in one write, in order
            evs = [await self.inbox.get()]
            while len(evs) < EVENTS_PER_PLAN and not self.inbox.empty():
                evs.append(self.inbox.get_nowait())
            now = self.clock.now()
            await self._plan([p for ev in evs for p in self.escalator.on_event(ev, now)])

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            now = self.clock.now()
            await self._plan(self.escalator.on_tick(now))
            await self._flood_summaries(now)
            # at most every OVERDUE_EVERY of the service's clock and of real time (a fast test clock must
            # not turn this look into a query per tick)
            if (self._last_overdue is None or now - self._last_overdue >= OVERDUE_EVERY) \
                    and time.monotonic() - self._last_overdue_real >= OVERDUE_REAL_MIN:
                self._last_overdue, self._last_overdue_real = now, time.monotonic()
                await self._report_overdue(now)
            self.ticks_done += 1

    async def _work(self) -> None:
        """Claim what is due and send it. A message being sent does not hold up the next claim: a slow
        gateway (up to its timeout) or a slow record must not keep a new alarm's first notice waiting.
        At most ``IN_FLIGHT`` messages are out at once; the claim takes only what there is room for."""
        sending: set[asyncio.Task[str]] = set()
        more = False  # the last claim filled the room: more may be due as soon as a message is done

        def done(t: asyncio.Task[str]) -> None:
            sending.discard(t)
            self._sending = len(sending)
            if more:
                self._wake.set()

        def send(claimed: Iterable[Claimed]) -> None:
            for c in claimed:
                task = tg.create_task(self.deliver(c, self.clock.now()), name=f"alerting-send-{c.key}")
                sending.add(task)
                task.add_done_callback(done)
            self._sending = len(sending)

        async with asyncio.TaskGroup() as tg:  # a delivery's error (NotLeading) ends the stage, as before
            while True:
                self._wake.clear()
                send(self._take_handed())  # claimed by the planning write itself
                room = IN_FLIGHT - len(sending) - self._reserved
                if room > 0:
                    claimed = await self.claim(self.clock.now(), room)
                    more = len(claimed) >= room
                    send(claimed)
                    if claimed and not more:
                        continue  # look once more at once: what was planned while this claim ran
                try:
                    async with asyncio.timeout(POLL):  # not wait_for: it can swallow a cancellation on 3.11
                        await self._wake.wait()
                except TimeoutError:
                    pass

    # --- the two stores -----------------------------------------------------------------------------
    def _down(self, what: str, e: BaseException) -> None:
        self.metrics.db_errors.inc()
        self.health.degraded(STAGE, f"database unavailable ({what}): {type(e).__name__}", self.clock.now())
        if self.gate is not None:
            self.gate.close(f"alerting {what}: {type(e).__name__}", self.clock.now())

    async def _store_do(self, what: str, fn: Callable[[Store], Any]) -> Any:
        """Run ``fn`` on the outbox table, or on the journal while the database is away.

        Without a journal (a stage built without one) a database error is waited out in place:
        capped, jittered back-off, and nothing is lost or reordered."""
        delay = 0.2
        while True:
            if self.gate is None or self.gate.up:
                try:
                    out = await fn(self.pg)
                    if self.gate is None or self.gate.up:
                        self.health.ok(STAGE, self.clock.now())
                    return out
                except Exception as e:
                    if not is_transient(e):
                        raise
                    self._down(what, e)
                    log.warning("alerting %s: database error (%s)", what, e)
                    if self.gate is None:
                        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                        delay = min(5.0, delay * 2)
                        continue
            assert self.gate is not None and self.local is not None
            try:
                async with self.gate.lock:
                    if self.gate.up:
                        continue  # the flusher opened it meanwhile: the database again
                    # what the table was given but had not yet handed out goes out from the journal now
                    if self.pg.unclaimed and (n := self.pg.unclaimed.hand_over(self.local.journal)):
                        log.warning("alerting: %d message(s) planned before the database went away are sent"
                                    " from the local journal", n)
                    return await fn(self.local)
            except (OSError, sqlite3.Error) as e:  # the local disk: wait, keep the work, never drop it
                log.error("alerting %s: local journal failed (%s); retrying", what, e)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(5.0, delay * 2)

    async def claim(self, now: datetime, limit: int = IN_FLIGHT) -> list[Claimed]:
        return list(await self._store_do("claim", lambda s: s.claim(now, limit)))

    async def deliver(self, c: Claimed, now: datetime) -> str:
        """Send one claimed message and record the attempt (in the store it came from, or the journal).

        Raises ``NotLeading`` instead of sending when ``may_send`` says no: the message stays claimed
        and the leader that took over sends it (with the same idempotency key)."""
        if self.may_send is not None and not self.may_send():
            raise NotLeading(c.key)
        d = await self.worker.send(c, now)
        extra = self.worker.fallback_rows(c, now) if d.fallback else []
        await self._record(c, now, d, extra)
        return d.outcome

    async def _record(self, c: Claimed, now: datetime, d: Decision, extra: Sequence[Row]) -> None:
        if c.id is None:  # a local row: its record is local too (the flusher moves both)
            assert self.gate is not None and self.local is not None
            async with self.gate.lock:
                await self.local.record(c, now, d, extra)
            return
        await self._store_do("recording an attempt", lambda s: s.record(c, now, d, extra))

    # --- planning -------------------------------------------------------------------------------
    def _rows(self, planned: list[Planned]) -> list[Row]:
        rows = []
        for p in planned:
            payload = payload_of(p, self.park, self.renderer, self.signer, self.settings.public_url)
            # in a flood, one summary per unit instead of one message per alarm; red is never held back.
            # Held messages are rows (status held), so a restart does not lose them.
            held = p.event.flood and p.event.severity is not Severity.RED
            if held:
                self.metrics.flood_held.inc()
            rows.append(Row.of(p, payload, "held" if held else "pending"))
        return rows

    def _take_handed(self) -> list[Claimed]:
        out = list(self._handed)
        self._handed.clear()
        return out

    async def _plan(self, planned: list[Planned]) -> None:
        """Write the plan; what of it is due now is claimed by the same write (one commit, not two,
        before a new alarm's first notice goes out) as far as the sender has room, and handed to it."""
        if not planned:
            return
        rows = self._rows(planned)
        now = self.clock.now()
        room = IN_FLIGHT - self._sending - len(self._handed) - self._reserved
        if room > 0 and any(r.status == "pending" and r.due_at <= now for r in rows):
            self._reserved += room
            try:
                claimed = await self._store_do("planning", lambda s: s.enqueue_and_claim(rows, now, room))
            finally:
                self._reserved -= room
            self._handed.extend(claimed)
        else:
            await self._store_do("planning", lambda s: s.enqueue(rows))
        for p in planned:
            self.metrics.planned.labels(p.channel, p.step.split("-")[0]).inc()
        self._wake.set()

    async def _flood_summaries(self, now: datetime) -> None:
        if self._last_flood_summary is not None and now - self._last_flood_summary < FLOOD_SUMMARY_EVERY:
            return
        if self.gate is not None and not self.gate.up:
            return  # held messages wait for the database; red alarms are never held
        self._last_flood_summary = now
        try:
            n = await self.pg.fold_held(lambda held: self._fold(held, now))
        except Exception as e:
            if not is_transient(e):
                raise
            self._down("flood summary", e)
            return
        if n:
            self._wake.set()

    def _fold(self, held: list[Row], now: datetime) -> list[Row]:
        n = int(now.timestamp())
        groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
        for r in held:
            groups[(r.unit, str(r.payload.get("level", "enterprise")))].append(r)
        out: list[Row] = []
        for (unit_code, level), items in groups.items():
            unit = self.park.units.get(unit_code)
            if unit is None or level not in LEVELS:
                continue
            alarms = {r.alarm_id for r in items}
            first = items[0].payload.get("alarm", {})
            worst = max((Severity(r.payload.get("alarm", {}).get("severity", "blue")) for r in items),
                        key=lambda s: s.rank)
            summary = AlarmEvent(alarm_id=0, kind=AlarmEventKind.FLOOD_START, ts=now,
                                 enterprise=str(first.get("enterprise", "")), rule="flood", severity=worst,
                                 message=f"{len(alarms)}条预警（{len(items)}条通知）合并："
                                 + "；".join(sorted({str(r.payload.get("alarm", {}).get("message", ""))
                                                    for r in items})[:5]),
                                 detail={"count": len(alarms)})
            lv: Level = LEVELS[LEVELS.index(level)]
            for p in self.escalator.recipients(summary, unit, lv, f"flood-{n}", now):
                out.append(Row.of(p, payload_of(p, self.park, self.renderer, self.signer, self.settings.public_url)))
        return out

    # --- a contact nobody could reach ------------------------------------------------------------
    async def _report_overdue(self, now: datetime) -> None:
        after = self.park.site.channels.delivery.unreachable_after
        overdue: list[Overdue] = await self._store_do("looking for unreached contacts",
                                                      lambda s: s.overdue(now, after))
        for o in overdue:
            rows, event = self._unreachable(o, now)
            log.warning("contact %s of %s not reached for alarm %d (%s) since %s: telling the duty room",
                        o.contact, o.unit, o.alarm_id, o.step, o.first_due.isoformat())
            await self._store_do("reporting an unreached contact", _reporter(o, now, rows, event))
            self.metrics.unreachable.inc()
        if overdue:
            self._wake.set()

    def _unreachable(self, o: Overdue, now: datetime) -> tuple[list[Row], dict[str, Any]]:
        a = o.payload.get("alarm", {})
        unit = self.park.units.get(o.unit)
        minutes = max(1, int((now - o.first_due).total_seconds() // 60))
        text = (f"{unit.name if unit else o.unit} {o.contact} 已{minutes}分钟未能收到本预警的通知"
                f"（{o.channel}），请电话联系")
        ev = AlarmEvent(alarm_id=o.alarm_id, kind=AlarmEventKind.UNREACHABLE, ts=now,
                        enterprise=str(a.get("enterprise", "")), rule=str(a.get("rule", "")),
                        severity=Severity(a.get("severity", "blue")), tag=a.get("tag"), value=a.get("value"),
                        limit=a.get("limit"), message=str(a.get("message", "")),
                        detail={"unreachable": text}, noticed_at=now)
        duty_code = self.park.site.channels.delivery.duty_room
        duty = None
        if duty_code is not None:
            duty = self.park.units.get(duty_code)
        elif ev.enterprise in self.park.enterprises:
            duty = self.park.unit_at(ev.enterprise, "town")
        rows: list[Row] = []
        if duty is not None:
            step = f"unreachable-{o.unit}-{o.who}"
            for p in self.escalator.recipients(ev, duty, duty.level, step, now):
                if not (p.unit == o.unit and p.key.split("/")[2] == o.who):  # not the unreached contact itself
                    rows.append(Row.of(p, payload_of(p, self.park, self.renderer, self.signer,
                                                     self.settings.public_url)))
        event = {"ts": now, "alarm_id": o.alarm_id, "kind": AlarmEventKind.UNREACHABLE.value,
                 "severity": ev.severity.value, "message": text,
                 "detail": {"unit": o.unit, "contact": o.contact, "channel": o.channel, "step": o.step,
                            "since": o.first_due.isoformat()}}
        return rows, event

    # --- restart ----------------------------------------------------------------------------------
    async def restore(self) -> int:
        """Rebuild escalation for open alarms from ``alarms`` and what the outbox already holds.

        An open, unacknowledged alarm with nothing planned yet was stored by the rule stage just
        before a crash: it is planned now as if just raised (idempotency keys drop any repeat).
        Escalation deadlines keep counting from when its immediate messages were first due."""
        async with self.pool.connection(timeout=10) as conn:
            cur = await conn.execute(
                "SELECT id, enterprise_code, rule, severity, raised_at, sensor_id, tag, value, limit_value, message,"
                " acked_at IS NOT NULL OR suppressed, flood FROM alarms WHERE state <> 'closed'")
            alarms = await cur.fetchall()
            cur = await conn.execute(
                "SELECT alarm_id, step, payload->>'level', first_due_at FROM outbox WHERE alarm_id IN"
                " (SELECT id FROM alarms WHERE state <> 'closed')")
            planned = await cur.fetchall()
        steps: dict[int, set[str]] = defaultdict(set)
        told: dict[int, set[str]] = defaultdict(set)
        started: dict[int, datetime] = {}
        for alarm_id, step, level, first_due in planned:
            steps[alarm_id].add(step)
            if step == "immediate" and first_due is not None:
                started[alarm_id] = min(started.get(alarm_id, first_due), first_due)
            if step not in ("cleared", "resolved") and not step.startswith("unreachable") and level:
                told[alarm_id].add(level)
        unplanned: list[AlarmEvent] = []
        now = self.clock.now()
        for r in alarms:
            if r[0] in self.escalator.tracks:
                continue  # an in-process restart: this stage already escalates it
            ev = AlarmEvent(alarm_id=r[0], kind=AlarmEventKind.RAISED, ts=r[4], enterprise=r[1], rule=r[2],
                            severity=Severity(r[3]), sensor_id=r[5], tag=r[6], value=r[7], limit=r[8],
                            message=r[9], flood=r[11])
            if not r[10] and "immediate" not in steps[r[0]]:
                unplanned.append(ev)
                continue
            done = {s for s in steps[r[0]] if s.startswith("then-")}
            repeats = max((int(s.split("-")[1]) for s in steps[r[0]] if s.startswith("repeat-")), default=0)
            self.escalator.restore(ev, [lv for lv in LEVELS if lv in told[r[0]]], done, repeats, bool(r[10]),
                                   started=started.get(r[0], now))
        for ev in unplanned:
            await self._plan(self.escalator.on_event(ev, now))
        if unplanned:
            log.warning("planned %d alarm(s) raised just before the last stop and never escalated", len(unplanned))
        return len(alarms)
