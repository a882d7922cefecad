"""What every rule operator shares: the park as dense arrays, one batch as operators see it, and
the shape of an operator. Pure: no IO.

An operator is one rule family's state and logic (threshold, rate, trend, liveness, instrument
fault, voting, power, switches). Each has the same few methods — take a batch of readings, answer
a tick, say when it next needs waking, snapshot and restore its learned state, adopt an open alarm
after a restart — and reports what it finds as :class:`rules.lifecycle.Signal` values. The engine
composes them; the lifecycle turns signals into alarms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from park.model import Park, SensorSpec
from park.site import AlarmManagement
from rules.lifecycle import Alarm, Signal

NEVER = np.iinfo(np.int64).min
I8 = npt.NDArray[np.int8]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
Arrays = dict[str, np.ndarray]

# Tie-break among signals of the same instant: a fault before a limit, a limit before the vote it
# completes, the vote before the early warning it replaces.
ORDER = {"liveness": 0, "fault": 1, "threshold": 2, "dust": 2, "rate": 3, "power": 3, "vote": 4, "trend": 5}


def _f(v: float | None) -> float:
    return np.nan if v is None else float(v)


class Context:
    """The park's sensors as dense arrays (index = position in ``park.sensors``)."""

    def __init__(self, park: Park, cfg: AlarmManagement) -> None:
        self.park = park
        self.cfg = cfg
        self.specs: list[SensorSpec] = park.sensors
        n = len(self.specs)
        self.n = n
        self.ids = np.array([s.id for s in self.specs], np.int32)
        max_id = int(self.ids.max()) if n else 0
        self.idx_of = np.full(max_id + 2, -1, np.int32)
        self.idx_of[self.ids] = np.arange(n, dtype=np.int32)
        self.ent_codes = list(park.enterprises)
        ent_pos = {e: k for k, e in enumerate(self.ent_codes)}
        self.ent_idx = np.array([ent_pos[s.enterprise] for s in self.specs], np.int32)

    def dense(self, sensor_ids: npt.ArrayLike) -> I32:
        """Dense indices of registry ids; -1 for ids not in this park."""
        sid = np.asarray(sensor_ids, np.int64)
        ok = (sid >= 0) & (sid < len(self.idx_of))
        return np.where(ok, self.idx_of[np.where(ok, sid, 0)], -1).astype(np.int32)

    def facts(self, i: int) -> dict[str, Any]:
        """The facts every alarm of sensor ``i`` carries (park.wording)."""
        s = self.specs[i]
        f: dict[str, Any] = {"name": s.display_name, "tag": s.tag, "unit": s.unit, "kind": s.kind.value,
                             "precision": s.precision}
        if s.hazard_source:
            f["hazard_source"] = s.hazard_source
        return f

    def signal(self, i: int, ts_us: int, key_rule: str, rule: str, on: bool, order: str, **kw: Any) -> Signal:
        s = self.specs[i]
        return Signal(int(ts_us), f"s:{s.id}:{key_rule}", rule, on, s.enterprise, s.id, s.tag,
                      order=ORDER[order], **kw)


@dataclass(slots=True)
class Readings:
    """One batch as operators see it: fresh readings of known, in-service sensors, sorted by
    (sensor, time); ``first`` marks each sensor's first reading in the batch.

    Operators add what later ones need: the fault operator clears ``good`` for readings never
    judged against process limits; the threshold operator lists ``level_changes``
    (time µs, sensor, old level, new level) in time order.
    """

    idx: I32
    ts: I64
    v: F64
    q: I8
    first: B
    arrival_us: int
    good: B
    level_changes: list[tuple[int, int, int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    @property
    def last(self) -> B:
        out = np.empty(len(self.idx), bool)
        if len(out):
            out[:-1] = self.first[1:]
            out[-1] = True
        return out

    def previous(self, values: np.ndarray, carry: np.ndarray) -> np.ndarray:
        """Each reading's previous value of the same sensor: in the batch, else ``carry[sensor]``."""
        prev = np.empty_like(values)
        if len(values):
            prev[1:] = values[:-1]
            prev[self.first] = carry[self.idx[self.first]]
        return prev


class Operator(Protocol):
    """One rule family: IO-free, the clock passed in."""

    name: str

    def on_readings(self, r: Readings) -> list[Signal]:
        """Judge a batch (every reading, in time order per sensor); return the conditions found."""
        ...

    def on_tick(self, now_us: int) -> list[Signal]:
        """Time-driven conditions on hazardwatch's clock (epoch µs)."""
        ...

    def next_wakeup(self, now_us: int) -> int | None:
        """The latest time (µs) on_tick must run again, or None when it has nothing pending."""
        ...

    def snapshot(self) -> Arrays:
        """Learned state as arrays keyed by registry sensor id (numpy bytes in the database)."""
        ...

    def restore(self, snap: Arrays) -> None:
        ...

    def adopt(self, alarm: Alarm, i: int) -> None:
        """An open alarm restored after a restart (``i``: its sensor's dense index, or -1)."""
        ...

    def nbytes(self) -> int:
        ...


def by_id(ctx: Context, sensor_ids: np.ndarray) -> tuple[I32, B]:
    """Map a snapshot's registry ids to dense indices; the mask says which are still in the park."""
    idx = ctx.dense(sensor_ids)
    return idx, idx >= 0


def arrays_nbytes(*arrays: np.ndarray) -> int:
    return sum(int(a.nbytes) for a in arrays)


__all__ = ["NEVER", "ORDER", "Arrays", "Context", "Operator", "Readings", "_f", "arrays_nbytes", "by_id"]
