"""Small typed values that cross stage boundaries: ingest -> rules -> alerting.

Hot-path values are frozen slotted dataclasses or numpy arrays; nothing here does IO.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

SHANGHAI_OFFSET = timedelta(hours=8)  # Asia/Shanghai has had no DST since 1991


class Severity(enum.StrEnum):
    """Four-colour warning grades (重大 / 较大 / 一般 / 低)."""

    RED = "red"
    ORANGE = "orange"
    YELLOW = "yellow"
    BLUE = "blue"

    @property
    def rank(self) -> int:
        """Higher is more severe: blue 1 .. red 4."""
        return _RANK[self]

    @property
    def zh(self) -> str:
        return _ZH[self]

    @property
    def colour_zh(self) -> str:
        return _COLOUR_ZH[self]

    @classmethod
    def by_rank(cls) -> list[Severity]:
        """Most severe first."""
        return sorted(cls, key=lambda s: -s.rank)


_RANK = {Severity.BLUE: 1, Severity.YELLOW: 2, Severity.ORANGE: 3, Severity.RED: 4}
_ZH = {Severity.RED: "重大", Severity.ORANGE: "较大", Severity.YELLOW: "一般", Severity.BLUE: "低"}
_COLOUR_ZH = {Severity.RED: "红色", Severity.ORANGE: "橙色", Severity.YELLOW: "黄色", Severity.BLUE: "蓝色"}


class Quality(enum.IntEnum):
    GOOD = 0
    UNCERTAIN = 1
    BAD = 2  # instrument fault: stored, never judged against process limits


Level = Literal["enterprise", "town", "district"]
LEVELS: tuple[Level, ...] = ("enterprise", "town", "district")


def utc(ts: datetime) -> datetime:
    """``ts`` as timezone-aware UTC; a naive value is refused rather than guessed."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime: hazardwatch keeps every time zone-aware")
    return ts.astimezone(UTC)


def to_shanghai(ts: datetime) -> datetime:
    """For showing a time to a person in China."""
    from datetime import timezone

    return utc(ts).astimezone(timezone(SHANGHAI_OFFSET, "CST"))


def epoch_us(ts: datetime) -> int:
    d = utc(ts) - datetime(1970, 1, 1, tzinfo=UTC)
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def from_epoch_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """Readings that ingest decoded from one or more messages, column-wise.

    ``sensor_id`` are registry ids; ``ts_us`` are UTC epoch microseconds; ``quality`` is
    0 good / 1 uncertain / 2 bad. All arrays have the same length.
    """

    sensor_id: npt.NDArray[np.int32]
    ts_us: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.int8]
    received_us: int = 0  # when ingest received the newest message of the batch

    def __len__(self) -> int:
        return int(self.sensor_id.shape[0])

    @classmethod
    def from_rows(
        cls, rows: list[tuple[int, datetime, float, int]], received_us: int = 0
    ) -> ReadingBatch:
        """Build from (sensor_id, ts, value, quality) tuples: for tests and simulators."""
        return cls(
            sensor_id=np.array([r[0] for r in rows], dtype=np.int32),
            ts_us=np.array([epoch_us(r[1]) for r in rows], dtype=np.int64),
            value=np.array([r[2] for r in rows], dtype=np.float64),
            quality=np.array([r[3] for r in rows], dtype=np.int8),
            received_us=received_us,
        )

    @classmethod
    def empty(cls) -> ReadingBatch:
        return cls(
            np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int8)
        )


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """A gateway's connectivity change (retained ``status`` topic, including Last Will)."""

    enterprise: str
    online: bool
    ts: datetime


@dataclass(frozen=True, slots=True)
class GatewayClock:
    """A gateway's measured clock offset, reported by ingest to the rules.

    ``offset_s`` is the gateway's clock minus hazardwatch's (negative: the gateway is slow),
    estimated from its freshest readings against their arrival time, so a store-and-forward
    backlog does not read as a slow clock. ``ts`` is hazardwatch's time of the measurement.
    """

    enterprise: str
    offset_s: float
    ts: datetime


# The unit of park-level alarms (an MQTT broker unreachable): the ``enterprise`` of the alarm, as
# the lifecycle already names the park in flood scopes. Escalation tells the park's duty room.
PARK_SCOPE = "*"


@dataclass(frozen=True, slots=True)
class BrokerState:
    """An MQTT broker's session went up (subscribed) or down, reported by ingest to the rules.

    ``broker`` names it (``host:port``); ``ts`` is hazardwatch's time of the change.
    """

    broker: str
    connected: bool
    ts: datetime


class AlarmEventKind(enum.StrEnum):
    RAISED = "raised"
    UPGRADED = "upgraded"  # severity rose in place
    DOWNGRADED = "downgraded"
    ACKED = "acked"
    CLEARED = "cleared"  # condition returned to normal (恢复)
    RESOLVED = "resolved"  # handling recorded (处置完毕); the alarm is closed
    SHELVED = "shelved"
    UNSHELVED = "unshelved"
    SUPPRESSED = "suppressed"
    UNSUPPRESSED = "unsuppressed"
    CHATTERING = "chattering"
    FLOOD_START = "flood_start"
    FLOOD_END = "flood_end"
    UNREACHABLE = "unreachable"  # alerting: a contact has gone unreached too long; the duty room is told


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One transition of one alarm, as rules hand it to alerting and as ``alarm_events`` keeps it.

    ``alarm_id`` is the ``alarms.id`` row; ``sensor_id``/``tag`` are None for alarms on an
    enterprise as a whole (communication loss, power). ``flood`` marks events raised during a
    flood, which alerting summarises instead of sending one by one (red is never held back).
    """

    alarm_id: int
    kind: AlarmEventKind
    ts: datetime
    enterprise: str
    rule: str
    severity: Severity
    sensor_id: int | None = None
    tag: str | None = None
    value: float | None = None
    limit: float | None = None
    message: str = ""
    by: str | None = None
    flood: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    # When hazardwatch made this transition, on its own clock. ``ts`` is the event's own time (a
    # reading's time for process rules, docs/contract.md §8); escalation deadlines count from the RAISED
    # event's ``noticed_at``, never from an old reading's time. None only for events built by hand.
    noticed_at: datetime | None = None
