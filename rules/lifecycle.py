"""Alarm state and transitions (ISA-18.2 / IEC 62682) — plain objects, no IO.

States: ``active_unacked`` → ``active_acked`` → ``closed`` when the condition clears; a condition
that clears first gives ``cleared_unacked`` (return to normal, not yet acknowledged), closed by
acknowledgement. Latching alarms stay active after the condition clears until acknowledged.
Resolving (处置记录) closes an alarm from any state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from park.types import AlarmEventKind, Severity

ACTIVE_UNACKED = "active_unacked"
ACTIVE_ACKED = "active_acked"
CLEARED_UNACKED = "cleared_unacked"
CLOSED = "closed"
OPEN_STATES = (ACTIVE_UNACKED, ACTIVE_ACKED, CLEARED_UNACKED)


@dataclass(slots=True)
class Alarm:
    """One alarm of one (sensor or enterprise, rule): at most one open per ``key``."""

    key: str
    rule: str
    enterprise: str
    severity: Severity
    raised_at: datetime
    sensor_id: int | None = None
    tag: str | None = None
    value: float | None = None
    limit: float | None = None
    message: str = ""
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

    @property
    def is_open(self) -> bool:
        return self.state != CLOSED

    @property
    def acked(self) -> bool:
        return self.state in (ACTIVE_ACKED, CLOSED) or self.acked_by is not None


@dataclass(frozen=True, slots=True)
class Transition:
    """What the core decided: one event of one alarm (the store gives it its row id)."""

    alarm: Alarm
    kind: AlarmEventKind
    ts: datetime
    by: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
