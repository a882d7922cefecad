"""Alarm state and transitions (ISA-18.2 / IEC 62682) — plain objects, no IO.

States: ``active_unacked`` → ``active_acked`` → ``closed`` when the condition clears; a condition
that clears first gives ``cleared_unacked`` (return to normal, not yet acknowledged), closed by
acknowledgement. Latching alarms stay active after the condition clears until acknowledged.
Resolving (处置记录) closes an alarm from any state.

Operators report conditions as :class:`Signal` values (a condition began or ended at a time);
:class:`Lifecycle` turns them into alarms and :class:`Transition` events, and owns everything an
alarm goes through on the way: suppression by an enterprise's state (never for life safety),
chattering, floods, shelving, acknowledgement. Every transition carries a frozen copy of the
alarm's severity, state, value, limit and facts at that event, so the audit records that moment.

Two clocks (docs/contract.md §8): a signal's ``ts`` is the event's own time (a reading's time for process
rules); ``noticed`` is hazardwatch's clock when the transition was made, which escalation counts
from. Chattering is counted on event time (a backlog replays as it happened); floods on
hazardwatch's time (what the duty room actually receives).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from park.site import AlarmManagement, EnterpriseState
from park.types import AlarmEventKind as K
from park.types import Severity, epoch_us, from_epoch_us
from rules.errors import AlarmNotFound, InvalidTransition

ACTIVE_UNACKED = "active_unacked"
ACTIVE_ACKED = "active_acked"
CLEARED_UNACKED = "cleared_unacked"
CLOSED = "closed"
OPEN_STATES = (ACTIVE_UNACKED, ACTIVE_ACKED, CLEARED_UNACKED)

# Process alarms an enterprise's maintenance or ordered stop may suppress by design; alarms of gas
# detectors (combustible, toxic, oxygen), sparks and votes never are (docs/contract.md §3).
SUPPRESSIBLE_RULES = frozenset({"high", "low", "rate", "trend", "fault_signal"})
LIFE_SAFETY_KINDS = frozenset({"gas_combustible", "gas_toxic", "oxygen", "spark_detector"})


def suppressible(rule: str, facts: dict[str, Any]) -> bool:
    """Whether an enterprise's state may suppress this alarm (never life safety)."""
    return rule in SUPPRESSIBLE_RULES and facts.get("kind") not in LIFE_SAFETY_KINDS


@dataclass(slots=True)
class Alarm:
    """One alarm of one (sensor, hazard source or enterprise; rule): at most one open per ``key``.

    ``detail`` holds the structured facts people read (park.wording documents the keys).
    """

    key: str
    rule: str
    enterprise: str
    severity: Severity
    raised_at: datetime  # the event's own time (a reading's time for process rules)
    sensor_id: int | None = None
    tag: str | None = None
    value: float | None = None
    limit: float | None = None
    state: str = ACTIVE_UNACKED
    condition: bool = True  # the abnormal condition holds now
    latching: bool = False
    acked_by: str | None = None
    shelved_until: datetime | None = None
    suppressed: bool = False
    chattering: bool = False
    hold_until: datetime | None = None  # a chattering alarm clears only after this
    clear_pending: bool = False
    flood: bool = False
    alarm_id: int | None = None  # the alarms row, once stored
    detail: dict[str, Any] = field(default_factory=dict)
    noticed_at: datetime | None = None  # hazardwatch's time when it was raised

    @property
    def is_open(self) -> bool:
        return self.state != CLOSED

    @property
    def acked(self) -> bool:
        return self.state in (ACTIVE_ACKED, CLOSED) or self.acked_by is not None


@dataclass(frozen=True, slots=True)
class Transition:
    """What the core decided: one event of one alarm, with the alarm as it was at that event.

    ``alarm`` is the live object (the store gives it its row id); ``severity``, ``state``,
    ``value``, ``limit`` and ``facts`` are frozen at the event.
    """

    alarm: Alarm
    kind: K
    ts: datetime
    by: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    noticed_at: datetime | None = None
    severity: Severity = Severity.BLUE
    state: str = ACTIVE_UNACKED
    value: float | None = None
    limit: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, a: Alarm, kind: K, ts: datetime, noticed: datetime | None, by: str | None = None,
           detail: dict[str, Any] | None = None) -> Transition:
        return cls(a, kind, ts, by, detail or {}, noticed, a.severity, a.state, a.value, a.limit, dict(a.detail))


@dataclass(slots=True)
class Signal:
    """An operator's finding: condition ``key`` began (``on``) or ended at ``ts_us`` (epoch µs).

    ``facts`` are the structured facts of the condition (park.wording); ``delay_s`` is how late
    the evidence arrived (arrival − event time), set by the engine for reading-driven signals.
    """

    ts_us: int
    key: str
    rule: str
    on: bool
    enterprise: str
    sensor_id: int | None = None
    tag: str | None = None
    severity: Severity = Severity.BLUE
    value: float | None = None
    limit: float | None = None
    facts: dict[str, Any] | None = None
    latching: bool = False
    order: int = 0  # tie-break among signals of one instant: fault, threshold, vote, trend …
    delay_s: float = 0.0


class States(dict[str, EnterpriseState]):
    """Enterprise states, with a version that changes with every write (operators cache by it)."""

    version = 0

    def __setitem__(self, key: str, value: EnterpriseState) -> None:
        self.version += 1
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.version += 1
        super().update(*args, **kwargs)


class Lifecycle:
    """Every open alarm, and what happens to it. ``out`` collects the transitions of one call."""

    def __init__(self, cfg: AlarmManagement, ent_state: dict[str, EnterpriseState]) -> None:
        self.cfg = cfg
        self.ent_state = ent_state
        self.alarms: dict[str, Alarm] = {}  # open alarms by key
        self.by_id: dict[int, Alarm] = {}  # open alarms by row id (closed ones leave)
        self.held: dict[str, Signal] = {}  # conditions present while suppressed, raised when it ends
        # raise times (event time, µs) per key: a list, not a deque — one per alarm key, mostly one or two
        # entries (a deque is 760 bytes even with one)
        self.chatter: dict[str, list[int]] = {}
        self.flood_hist: dict[str, deque[int]] = {}  # raise times (hazardwatch time, µs) per scope
        self.flooding: set[str] = set()
        self.out: list[Transition] = []
        self.noticed: datetime | None = None
        self.timed: set[str] = set()  # keys of alarms a tick must look at (shelved, clear pending)
        self._pruned_us = 0

    # --- conditions from operators --------------------------------------------------------------
    def apply(self, sig: Signal) -> None:
        if sig.on:
            self._raise(sig)
        else:
            self._clear(sig.key, from_epoch_us(sig.ts_us), sig.value)

    def _suppressed_now(self, rule: str, enterprise: str, facts: dict[str, Any]) -> bool:
        return suppressible(rule, facts) and self.ent_state.get(enterprise, EnterpriseState.RUNNING) \
            is not EnterpriseState.RUNNING

    def _raise(self, sig: Signal, extra: dict[str, Any] | None = None) -> None:
        when = from_epoch_us(sig.ts_us)
        facts = dict(sig.facts or {})
        a = self.alarms.get(sig.key)
        if (a is None or not a.condition) and self._suppressed_now(sig.rule, sig.enterprise, facts):
            self.held[sig.key] = sig  # suppressed by design; raised if still present when that ends
            return
        self.held.pop(sig.key, None)
        if extra:
            facts |= extra
        if a is not None:
            a.value = sig.value
            a.detail.update(facts)
            if not a.condition:  # back in alarm before it was closed: re-alarm the same alarm
                a.condition = True
                a.clear_pending = False
                if a.state == CLEARED_UNACKED:
                    a.state = ACTIVE_UNACKED
                if sig.severity.rank > a.severity.rank:
                    a.severity, a.limit = sig.severity, sig.limit
                self._mark_late(a, sig)
                self._note_raise(a, sig.ts_us)
                self._emit(a, K.RAISED, when, detail={"realarm": True})
            elif a.clear_pending:
                a.clear_pending = False
            elif sig.severity.rank > a.severity.rank:
                a.severity, a.limit = sig.severity, sig.limit
                self._emit(a, K.UPGRADED, when)
            return
        a = Alarm(key=sig.key, rule=sig.rule, enterprise=sig.enterprise, severity=sig.severity, raised_at=when,
                  sensor_id=sig.sensor_id, tag=sig.tag, value=sig.value, limit=sig.limit, latching=sig.latching,
                  detail=facts | ({"latching": True} if sig.latching else {}), noticed_at=self.noticed)
        self._mark_late(a, sig)
        self.alarms[sig.key] = a
        self._note_raise(a, sig.ts_us)
        self._emit(a, K.RAISED, when)

    def _mark_late(self, a: Alarm, sig: Signal) -> None:
        if sig.delay_s > self.cfg.backfill_after.total_seconds():
            a.detail["backfilled"] = True
            a.detail["delay_s"] = round(sig.delay_s)
        else:
            a.detail.pop("backfilled", None)
            a.detail.pop("delay_s", None)

    def _note_raise(self, a: Alarm, ts_us: int) -> None:
        window = int(self.cfg.chatter_window.total_seconds() * 1e6)
        hist = self.chatter.setdefault(a.key, [])
        hist.append(ts_us)
        old = 0
        while old < len(hist) and ts_us - hist[old] > window:
            old += 1
        del hist[:old]
        noticed = self.noticed or from_epoch_us(ts_us)
        if len(hist) >= self.cfg.chatter_count and not a.chattering:
            a.chattering = True
            self._emit(a, K.CHATTERING, from_epoch_us(ts_us),
                       detail={"count": len(hist), "window_s": self.cfg.chatter_window.total_seconds()})
        if a.chattering:
            a.hold_until = noticed + self.cfg.chatter_hold
        now_us = epoch_us(noticed)
        fwin = int(self.cfg.flood_window.total_seconds() * 1e6)
        for scope in dict.fromkeys((a.enterprise, "*")):  # a park-level alarm counts once
            fh = self.flood_hist.setdefault(scope, deque())
            fh.append(now_us)
            while fh and now_us - fh[0] > fwin:
                fh.popleft()
            if len(fh) >= self.cfg.flood_count and scope not in self.flooding:
                self.flooding.add(scope)
                self.out.append(Transition.of(self._scope_alarm(scope, noticed), K.FLOOD_START, noticed, noticed,
                                              detail={"count": len(fh)}))
        a.flood = a.enterprise in self.flooding or "*" in self.flooding

    def _scope_alarm(self, scope: str, when: datetime) -> Alarm:
        """A stand-in naming the enterprise (or park, '*') for flood start/end events."""
        return Alarm(key=f"flood:{scope}", rule="flood", enterprise=scope, severity=Severity.BLUE, raised_at=when)

    def _clear(self, key: str, when: datetime, value: float | None, force: bool = False) -> None:
        self.held.pop(key, None)
        a = self.alarms.get(key)
        if a is None or not a.condition:
            return
        if a.chattering and not force and a.hold_until is not None and (self.noticed or when) < a.hold_until:
            a.clear_pending = True  # damped: it clears at the tick after the hold if still normal
            self.timed.add(key)
            return
        a.condition = False
        a.value = value if value is not None else a.value
        if a.latching and a.state == ACTIVE_UNACKED:
            return  # latched: stays in alarm until acknowledged (reset)
        if a.state == ACTIVE_ACKED or (a.latching and a.acked_by):
            self._close(a)
        else:
            a.state = CLEARED_UNACKED
        self._emit(a, K.CLEARED, when)

    def _close(self, a: Alarm) -> None:
        a.state = CLOSED
        self.alarms.pop(a.key, None)
        if a.alarm_id is not None:
            self.by_id.pop(a.alarm_id, None)

    def _emit(self, a: Alarm, kind: K, when: datetime, by: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
        self.out.append(Transition.of(a, kind, when, self.noticed or when, by, detail))

    def holds(self, key: str) -> bool:
        """Whether condition ``key`` is present now (raised, or held by suppression)."""
        a = self.alarms.get(key)
        return (a is not None and a.condition) or key in self.held

    # --- time ---------------------------------------------------------------------------------
    def tick(self, now: datetime) -> None:
        for key in list(self.timed):
            a = self.alarms.get(key)
            if a is None or (a.shelved_until is None and not a.clear_pending):
                self.timed.discard(key)
                continue
            if a.shelved_until is not None and now >= a.shelved_until:
                a.shelved_until = None
                self._emit(a, K.UNSHELVED, now)
            if a.clear_pending and a.hold_until is not None and now >= a.hold_until:
                a.clear_pending = False
                self._clear(a.key, now, a.value, force=True)
        now_us = epoch_us(now)
        fwin = int(self.cfg.flood_window.total_seconds() * 1e6)
        for scope in list(self.flooding):
            hist = self.flood_hist[scope]
            while hist and now_us - hist[0] > fwin:
                hist.popleft()
            if len(hist) < self.cfg.flood_count // 2:
                self.flooding.discard(scope)
                self.out.append(Transition.of(self._scope_alarm(scope, now), K.FLOOD_END, now, now))
        # bounded memory: history that can no longer count leaves (looked at once a minute)
        if now_us - self._pruned_us < 60_000_000:
            return
        self._pruned_us = now_us
        cwin = int(self.cfg.chatter_window.total_seconds() * 1e6) + 3_600_000_000
        for key in [k for k, h in self.chatter.items() if not h or now_us - h[-1] > cwin]:
            held = self.alarms.get(key)
            if held is None or not held.chattering:
                del self.chatter[key]
        for scope in [s for s, h in self.flood_hist.items() if not h or now_us - h[-1] > fwin]:
            if scope not in self.flooding:
                del self.flood_hist[scope]

    def next_wakeup(self, now: datetime, soon: datetime) -> datetime:
        for key in self.timed:
            a = self.alarms.get(key)
            if a is None:
                continue
            for t in (a.shelved_until, a.hold_until if a.clear_pending else None):
                if t is not None and t < soon:
                    soon = max(now, t)
        return soon

    # --- operator commands ----------------------------------------------------------------------
    def get(self, alarm_id: int) -> Alarm:
        a = self.by_id.get(alarm_id)
        if a is None or not a.is_open:
            raise AlarmNotFound(alarm_id)
        return a

    def ack(self, alarm_id: int, by: str, now: datetime, note: str | None = None) -> None:
        a = self.get(alarm_id)
        if a.state not in (ACTIVE_UNACKED, CLEARED_UNACKED) and not (a.latching and a.state == ACTIVE_ACKED):
            raise InvalidTransition(alarm_id, a.state, "ack")
        a.acked_by = by
        if a.state == CLEARED_UNACKED or (a.latching and not a.condition):
            self._close(a)
        else:
            a.state = ACTIVE_ACKED
        self._emit(a, K.ACKED, now, by=by, detail={"note": note} if note else {})

    def resolve(self, alarm_id: int, by: str, now: datetime, cause: str, action: str) -> None:
        a = self.get(alarm_id)
        if a.acked_by is None:
            a.acked_by = by
        self._close(a)
        self._emit(a, K.RESOLVED, now, by=by, detail={"cause": cause, "action": action})

    def shelve(self, alarm_id: int, by: str, now: datetime, reason: str, until: datetime) -> None:
        a = self.get(alarm_id)
        if until <= now:
            raise InvalidTransition(alarm_id, a.state, "shelve until a time in the past")
        a.shelved_until = until
        self.timed.add(a.key)
        self._emit(a, K.SHELVED, now, by=by, detail={"reason": reason, "until": until.isoformat()})

    def unshelve(self, alarm_id: int, by: str, now: datetime) -> None:
        a = self.get(alarm_id)
        if a.shelved_until is None:
            raise InvalidTransition(alarm_id, a.state, "unshelve (not shelved)")
        a.shelved_until = None
        self._emit(a, K.UNSHELVED, now, by=by)

    def set_enterprise_state(self, enterprise: str, state: EnterpriseState, now: datetime) -> None:
        """Maintenance or an ordered stop suppresses process alarms by design, never life safety.

        When it ends, a suppressed condition still present is raised then (and escalates from then).
        """
        self.ent_state[enterprise] = state
        suppress = state is not EnterpriseState.RUNNING
        for a in list(self.alarms.values()):
            if a.enterprise == enterprise and suppressible(a.rule, a.detail) and a.suppressed != suppress:
                a.suppressed = suppress
                self._emit(a, K.SUPPRESSED if suppress else K.UNSUPPRESSED, now,
                           detail={"enterprise_state": state.value})
        if not suppress:
            now_us = epoch_us(now)
            for key, sig in list(self.held.items()):
                if sig.enterprise == enterprise:
                    del self.held[key]
                    late = replace(sig, ts_us=max(now_us, sig.ts_us), delay_s=0.0)
                    self._raise(late, extra={"after_suppression": True, "since": from_epoch_us(sig.ts_us).isoformat()})

    # --- restart ------------------------------------------------------------------------------
    def restore(self, alarms: list[Alarm]) -> None:
        for a in alarms:
            self.alarms[a.key] = a
            if a.shelved_until is not None:
                self.timed.add(a.key)
            if a.alarm_id is not None:
                self.by_id[a.alarm_id] = a

    def bind(self, alarm: Alarm, alarm_id: int) -> None:
        alarm.alarm_id = alarm_id
        if alarm.is_open:
            self.by_id[alarm_id] = alarm

    def snapshot(self) -> dict[str, Any]:
        keys = list(self.chatter)
        counts = [len(self.chatter[k]) for k in keys]
        scopes = list(self.flood_hist)
        return {
            "chatter_keys": keys, "chatter_n": counts,
            "chatter_ts": [t for k in keys for t in self.chatter[k]],
            "flood_scopes": scopes, "flood_n": [len(self.flood_hist[s]) for s in scopes],
            "flood_ts": [t for s in scopes for t in self.flood_hist[s]],
            "flooding": sorted(self.flooding),
        }

    def restore_snapshot(self, snap: dict[str, Any]) -> None:
        pos = 0
        for k, n in zip(snap["chatter_keys"], snap["chatter_n"], strict=True):
            self.chatter[str(k)] = [int(t) for t in snap["chatter_ts"][pos:pos + int(n)]]
            pos += int(n)
        pos = 0
        for s, n in zip(snap["flood_scopes"], snap["flood_n"], strict=True):
            self.flood_hist[str(s)] = deque(int(t) for t in snap["flood_ts"][pos:pos + int(n)])
            pos += int(n)
        self.flooding |= {str(s) for s in snap["flooding"]}
