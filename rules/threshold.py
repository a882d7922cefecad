"""Threshold levels with deadband and delays: HH = 2, H = 1, normal = 0, L = -1, LL = -2.

A level, once reached, holds until the value has come back past the limit by the deadband
(ISA-18.2 hysteresis). On- and off-delays complete on readings' own time: a change of level takes
effect at the first reading at or after the delay that still shows it, so a spike shorter than the
delay never alarms however late its readings arrive, and a clear is never stamped before its raise.

Limits, deadbands and delays are kept once per distinct configuration (most sensors of a kind
share one), each sensor holding only the index of its own: a few bytes per sensor.

The batch is screened in one vectorised pass against each sensor's level at the start of the
batch; a sensor none of whose readings would change its level (and with no delay pending) cannot
change during the batch, so only the others go through Python, reading by reading.
"""

from __future__ import annotations

import numpy as np

from park.model import SensorSpec
from park.site import SensorKind, SeverityDefaults
from park.types import Severity
from rules.base import F64, I8, Arrays, Context, Readings, _f, arrays_nbytes, by_id
from rules.lifecycle import Alarm, Signal

LEVEL_NAMES = {2: "HH", 1: "H", -1: "L", -2: "LL"}


def levels(v: F64, cur: I8, hh: F64, h: F64, lo: F64, ll: F64, db: F64) -> I8:
    """Target level of each reading given its sensor's current level (NaN limits never match)."""
    out = np.zeros(v.shape, np.int8)
    out[(v <= lo) | ((cur <= -1) & (v < lo + db))] = -1
    out[(v <= ll) | ((cur <= -2) & (v < ll + db))] = -2
    out[(v >= h) | ((cur >= 1) & (v > h - db))] = 1
    out[(v >= hh) | ((cur >= 2) & (v > hh - db))] = 2
    return out


def severity(s: SensorSpec, lvl: int, sv: SeverityDefaults) -> Severity:
    """GB/T 50493: first / second level; toxic second level and HH/LL on grade 1–2 sources are red."""
    if abs(lvl) == 1:
        return sv.first_level
    if s.kind is SensorKind.GAS_TOXIC:
        return sv.toxic_second_level
    if s.hazard_grade is not None and s.hazard_grade <= 2:
        return sv.hh_on_major_hazard
    return sv.second_level


class Threshold:
    name = "threshold"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        cfg = ctx.cfg
        specs = ctx.specs
        table: dict[tuple[float, ...], int] = {}
        cid = []
        seen: dict[tuple[object, ...], int] = {}  # sensors sharing a configuration share its row
        for s in specs:
            same = (s.limits, s.kind, s.deadband, s.on_delay, s.off_delay)
            k = seen.get(same)
            if k is not None:
                cid.append(k)
                continue
            if s.kind.is_boolean:
                row: tuple[float, ...] = (np.nan, np.nan, np.nan, np.nan, 0.0, 0.0, 0.0)
            else:
                row = (_f(s.limits.hh), _f(s.limits.h), _f(s.limits.l), _f(s.limits.ll),
                       s.deadband if s.deadband is not None else self._default_deadband(s),
                       (s.on_delay or cfg.on_delay).total_seconds(), (s.off_delay or cfg.off_delay).total_seconds())
            key = tuple(-1e300 if x != x else x for x in row)  # NaN never equals itself: key on a stand-in
            k = seen[same] = table.setdefault(key, len(table))
            cid.append(k)
        rows = np.array(list(table), np.float64).reshape(-1, 7) if table else np.zeros((0, 7))
        rows[rows == -1e300] = np.nan
        self.cid = np.array(cid, np.uint16 if len(table) < 65536 else np.int32)
        # per configuration
        self.c_hh, self.c_h, self.c_lo, self.c_ll, self.c_db = (np.ascontiguousarray(rows[:, k]) for k in range(5))
        self.c_on_delay, self.c_off_delay = rows[:, 5], rows[:, 6]
        self.level = np.zeros(ctx.n, np.int8)
        self.pending: dict[int, tuple[int, int]] = {}  # sensor -> (target level, since µs)

    def _default_deadband(self, s: SensorSpec) -> float:
        lims = [abs(v) for _k, v in s.limits.items() if v]
        return (min(lims) if lims else 0.0) * self.ctx.cfg.deadband_fraction

    def limit(self, i: int, lvl: int) -> float:
        return float({2: self.c_hh, 1: self.c_h, -1: self.c_lo, -2: self.c_ll}[lvl][self.cid[i]])

    def limits(self, i: np.ndarray) -> tuple[F64, F64, F64, F64]:
        """HH, H, L, LL of sensors ``i`` (NaN: none)."""
        c = self.cid[i]
        return self.c_hh[c], self.c_h[c], self.c_lo[c], self.c_ll[c]

    # --- readings -----------------------------------------------------------------------------
    def on_readings(self, r: Readings) -> list[Signal]:
        if not len(r):
            return []
        idx = r.idx
        cur = self.level[idx]
        c = self.cid[idx]
        tgt = levels(r.v, cur, self.c_hh[c], self.c_h[c], self.c_lo[c], self.c_ll[c], self.c_db[c])
        moving = (tgt != cur) & r.good
        if self.pending:
            moving |= np.isin(idx, np.fromiter(self.pending, np.int32, len(self.pending))) & r.good
        if not moving.any():
            return []
        out: list[Signal] = []
        sel = np.flatnonzero(np.isin(idx, idx[moving]) & r.good)
        for j in sel:  # grouped by sensor, in time order within each
            self._step(int(idx[j]), int(r.ts[j]), float(r.v[j]), r, out)
        r.level_changes.sort(key=lambda c: c[0])
        return out

    def _target(self, i: int, v: float) -> int:
        cur = int(self.level[i])
        c = self.cid[i]
        hh, h, lo, ll, db = self.c_hh[c], self.c_h[c], self.c_lo[c], self.c_ll[c], self.c_db[c]
        if v >= hh or (cur >= 2 and v > hh - db):
            return 2
        if v >= h or (cur >= 1 and v > h - db):
            return 1
        if v <= ll or (cur <= -2 and v < ll + db):
            return -2
        if v <= lo or (cur <= -1 and v < lo + db):
            return -1
        return 0

    def _step(self, i: int, ts: int, v: float, r: Readings, out: list[Signal]) -> None:
        cur = int(self.level[i])
        target = self._target(i, v)
        if target == cur:
            self.pending.pop(i, None)
            return
        worse = abs(target) > abs(cur) or target * cur < 0
        c = self.cid[i]
        delay_us = float(self.c_on_delay[c] if worse else self.c_off_delay[c]) * 1e6
        if delay_us > 0:
            pend = self.pending.get(i)
            if pend is None or pend[0] != target:
                self.pending[i] = (target, ts)
                return
            if ts - pend[1] < delay_us:
                return
        self.pending.pop(i, None)
        self._set(i, cur, target, ts, v, r, out)

    def _set(self, i: int, old: int, new: int, ts: int, v: float, r: Readings, out: list[Signal]) -> None:
        self.level[i] = new
        r.level_changes.append((ts, i, old, new))
        s = self.ctx.specs[i]
        for rule, sign in (("high", 1), ("low", -1)):
            if new * sign > 0:
                lim = self.limit(i, new)
                facts = self.ctx.facts(i) | {"level": LEVEL_NAMES[new]}
                out.append(self.ctx.signal(i, ts, rule, rule, True, "threshold", value=v, limit=lim, facts=facts,
                                           severity=severity(s, new, self.ctx.cfg.severity), latching=s.latching))
            elif old * sign > 0:
                out.append(self.ctx.signal(i, ts, rule, rule, False, "threshold", value=v))

    # --- the rest of the shape -----------------------------------------------------------------
    def on_tick(self, now_us: int) -> list[Signal]:
        return []  # delays complete on readings' time, never on the wall clock

    def next_wakeup(self, now_us: int) -> int | None:
        return None

    def snapshot(self) -> Arrays:
        keys = list(self.pending)
        return {"sensor_id": self.ctx.ids[np.array(keys, np.int32)] if keys else np.empty(0, np.int32),
                "target": np.array([self.pending[k][0] for k in keys], np.int8),
                "since": np.array([self.pending[k][1] for k in keys], np.int64)}

    def restore(self, snap: Arrays) -> None:
        idx, ok = by_id(self.ctx, snap["sensor_id"])
        for i, t, since in zip(idx[ok], snap["target"][ok], snap["since"][ok], strict=True):
            self.pending[int(i)] = (int(t), int(since))

    def adopt(self, alarm: Alarm, i: int) -> None:
        if i < 0 or not alarm.condition:
            return
        lvl = str(alarm.detail.get("level", ""))
        if alarm.rule == "high":
            self.level[i] = 2 if lvl == "HH" else 1
        elif alarm.rule == "low":
            self.level[i] = -2 if lvl == "LL" else -1

    def nbytes(self) -> int:
        return arrays_nbytes(self.cid, self.level, self.c_hh, self.c_h, self.c_lo, self.c_ll, self.c_db,
                             self.c_on_delay, self.c_off_delay)
