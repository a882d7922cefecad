"""Escalation timing (docs/contract.md §3) — pure: alarm events and ticks in, planned messages out.

For each alarm: on raise, every unit named in ``immediate`` is told; each ``then`` step tells its
level once the alarm has gone unacknowledged ``after`` that long since it was raised; until
acknowledged, the units already told are reminded every ``repeat_every``. An upgrade re-plans
the rest at the new severity; a clear or a resolution sends a short notice to everyone told.
Every planned message has an idempotency key (alarm, unit, contact, channel, step), so planning
twice — after a restart, say — never sends twice.

Deadlines count from when hazardwatch noticed the alarm (the RAISED event's ``noticed_at``, else
the clock passed in), never from the reading's own time: a reading stamped 1970 or three hours
late raises an alarm whose reminders start now. A reminder that falls due while hazardwatch was
away (a restart, a long pause) is sent once — the latest due — never a burst of every missed one.
A contact is identified by its address (phone, WeCom user id), not its name (docs/contract.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from park.model import Park, UnitInfo
from park.site import Contact, EscalationPolicy
from park.types import LEVELS, PARK_SCOPE, AlarmEvent, Level, Severity
from park.types import AlarmEventKind as K

ROBOT = "群机器人"  # the contact name of a unit's WeCom group robot


@dataclass(frozen=True, slots=True)
class Planned:
    """One message to one recipient on one channel, due at ``due_at``."""

    key: str  # idempotency key
    alarm_id: int
    unit: str
    level: Level
    contact: str
    channel: str  # sms | wecom | webhook | wecom_robot | console
    address: str  # phone, WeCom user id, robot key — what the channel needs
    step: str  # immediate | then-<level> | repeat-<n> | upgrade | cleared | resolved | flood-<n>
    due_at: datetime
    event: AlarmEvent


@dataclass(slots=True)
class _Track:
    event: AlarmEvent  # the raise (updated on upgrade)
    raised_at: datetime
    severity: Severity
    told: list[Level] = field(default_factory=list)
    told_at: dict[str, datetime] = field(default_factory=dict)
    done_steps: set[str] = field(default_factory=set)
    repeats: int = 0
    stopped: bool = False  # acknowledged, resolved, suppressed
    paused: bool = False  # shelved
    closed: bool = False


class Escalator:
    """Plans messages for alarms of ``park`` by the site's escalation policies."""

    def __init__(self, park: Park, *, console: bool = False) -> None:
        self.park = park
        self.policies: dict[Severity, EscalationPolicy] = dict(park.site.escalation)
        self.console = console
        self.tracks: dict[int, _Track] = {}

    # --- events -------------------------------------------------------------------------------
    def on_event(self, ev: AlarmEvent, now: datetime | None = None) -> list[Planned]:
        """Plan what ``ev`` calls for; ``now`` is the service's clock (escalation never runs on a reading's time)."""
        if ev.alarm_id <= 0 or (ev.enterprise not in self.park.enterprises and ev.enterprise != PARK_SCOPE):
            return []
        tr = self.tracks.get(ev.alarm_id)
        now = ev.noticed_at or now or ev.ts
        if ev.kind is K.RAISED:
            if tr is not None:
                return []  # a re-alarm of an alarm already being escalated
            tr = _Track(event=ev, raised_at=now, severity=ev.severity)
            self.tracks[ev.alarm_id] = tr
            return self._tell(tr, list(self.policies[ev.severity].immediate), "immediate", now) + self._advance(tr, now)
        if tr is None:
            return []
        if ev.kind is K.UPGRADED:
            tr.severity = ev.severity
            tr.event = ev
            new = [lv for lv in self.policies[ev.severity].immediate if lv not in tr.told]
            return self._tell(tr, new, "upgrade", now) + self._advance(tr, now)
        if ev.kind is K.ACKED:
            tr.stopped = True
            if ev.detail.get("state") == "closed":
                tr.closed = True
            return []
        if ev.kind in (K.SUPPRESSED,):
            tr.stopped = True
            return []
        if ev.kind is K.SHELVED:
            tr.paused = True
            return []
        if ev.kind is K.UNSHELVED:
            tr.paused = False
            return self._advance(tr, now)
        if ev.kind in (K.CLEARED, K.RESOLVED):
            step = "cleared" if ev.kind is K.CLEARED else "resolved"
            out = self._tell(tr, list(tr.told), step, now, event=ev, notice=True)
            if ev.kind is K.RESOLVED or ev.detail.get("state") == "closed":
                tr.closed = True
                tr.stopped = True
            return out
        return []

    def on_tick(self, now: datetime) -> list[Planned]:
        out: list[Planned] = []
        closed = False
        for tr in self.tracks.values():
            out += self._advance(tr, now)
            closed |= tr.closed
        if closed:
            self.tracks = {k: v for k, v in self.tracks.items() if not v.closed}
        return out

    def _advance(self, tr: _Track, now: datetime) -> list[Planned]:
        """The steps and the reminder of one alarm that are due at ``now``. An event advances only its
        own alarm (the tick loop advances the others), so a burst of raises costs each raise its own
        work, not a pass over every open alarm."""
        if tr.stopped or tr.paused:
            return []
        out: list[Planned] = []
        pol = self.policies[tr.severity]
        for step in pol.then:
            name = f"then-{step.level}"
            if name not in tr.done_steps and now >= tr.raised_at + step.after:
                tr.done_steps.add(name)
                if step.level not in tr.told:
                    out += self._tell(tr, [step.level], name, tr.raised_at + step.after)
                    tr.told_at[step.level] = now  # told now (late or not): no reminder in the same breath
        if pol.repeat_every is not None and now >= tr.raised_at + pol.repeat_every * (tr.repeats + 1):
            # only the latest reminder due: after a pause, one late reminder, never a burst of missed
            # ones (and no loop whose length depends on how long the pause or an old timestamp was)
            tr.repeats = int((now - tr.raised_at) / pol.repeat_every)
            due = tr.raised_at + pol.repeat_every * tr.repeats
            # remind those told before this reminder, not a level told for the first time just now
            earlier = [lv for lv in tr.told if tr.told_at.get(lv, tr.raised_at) < due]
            out += self._tell(tr, earlier, f"repeat-{tr.repeats}", due, remind=True)
        return out

    def next_wakeup(self, now: datetime) -> datetime | None:
        best: datetime | None = None
        for tr in self.tracks.values():
            if tr.stopped or tr.paused:
                continue
            pol = self.policies[tr.severity]
            cands = [tr.raised_at + s.after for s in pol.then if f"then-{s.level}" not in tr.done_steps]
            if pol.repeat_every is not None:
                cands.append(tr.raised_at + pol.repeat_every * (tr.repeats + 1))
            for c in cands:
                if best is None or c < best:
                    best = c
        return best

    def restore(self, ev: AlarmEvent, told: list[Level], done_steps: set[str], repeats: int,
                stopped: bool, started: datetime | None = None) -> None:
        """After a restart: an open alarm and what was already planned for it (from the outbox).

        ``started`` is when its escalation began (its immediate messages' due time)."""
        self.tracks[ev.alarm_id] = _Track(event=ev, raised_at=started or ev.noticed_at or ev.ts, severity=ev.severity,
                                          told=[lv for lv in LEVELS if lv in told], done_steps=done_steps,
                                          repeats=repeats, stopped=stopped)

    # --- recipients ---------------------------------------------------------------------------
    def _tell(self, tr: _Track, levels: list[Level], step: str, due: datetime, *, event: AlarmEvent | None = None,
              notice: bool = False, remind: bool = False) -> list[Planned]:
        ev = event or tr.event
        out: list[Planned] = []
        if ev.enterprise == PARK_SCOPE:
            # a park-level alarm (an MQTT broker unreachable) has no enterprise, town or district of its
            # own: the park's duty room (else every district) is told once per step, whatever the levels
            if not levels:
                return out
            if not notice and not remind:
                first = not tr.told
                for level in levels:
                    if level not in tr.told:
                        tr.told.append(level)
                        tr.told_at[level] = due
                if not first:
                    return out
            for unit in self.park.park_units():
                out += self.recipients(ev, unit, unit.level, step, due)
            return out
        for level in levels:
            try:
                unit = self.park.unit_at(ev.enterprise, level)
            except KeyError:
                continue
            if not notice and not remind and level not in tr.told:
                tr.told.append(level)
                tr.told_at[level] = due
            out += self.recipients(ev, unit, level, step, due)
        return out

    def recipients(self, ev: AlarmEvent, unit: UnitInfo, level: Level, step: str, due: datetime) -> list[Planned]:
        out = []
        for c in unit.contacts:
            if not c.channels:
                continue
            ch = c.channels[0]  # the first channel; the outbox falls back to the next on repeated failure
            out.append(self._planned(ev, unit, level, c.name, contact_id(c), ch, address_of(c, ch), step, due))
        if unit.robot_key:
            # the robot's key is a secret: it is looked up when sending, never written into the outbox
            out.append(self._planned(ev, unit, level, ROBOT, "robot", "wecom_robot", "", step, due))
        if self.console:
            out.append(self._planned(ev, unit, level, "控制台", "console", "console", "", step, due))
        return out

    @staticmethod
    def _planned(ev: AlarmEvent, unit: UnitInfo, level: Level, contact: str, who: str, channel: str, address: str,
                 step: str, due: datetime) -> Planned:
        return Planned(message_key(ev.alarm_id, unit.code, who, channel, step), ev.alarm_id, unit.code, level,
                       contact, channel, address, step, due, ev)


def contact_id(c: Contact) -> str:
    """A contact's identity in idempotency keys: its address (phone, else WeCom user id), never its name."""
    return c.phone or f"wecom:{c.wecom_user}"


def address_of(c: Contact, channel: str) -> str:
    return (c.phone if channel == "sms" else c.wecom_user if channel == "wecom" else "") or ""


def message_key(alarm_id: int, unit: str, who: str, channel: str, step: str) -> str:
    """The idempotency key: (alarm, unit, contact identity, channel, step) — docs/contract.md §3."""
    return f"{alarm_id}/{unit}/{who}/{channel}/{step}"


def highest_level(told: list[Level]) -> Level | None:
    for lv in reversed(LEVELS):
        if lv in told:
            return lv
    return None
