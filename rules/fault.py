"""Instrument fault: bad quality, a value outside the instrument's range, or a value that has not
changed for ``flatline_after`` (a stuck transmitter).

Faulty readings are never judged against process limits (the operator clears ``Readings.good``
for them). A fault alarm clears at the first good reading after it, and a flat line at the first
reading that differs, whatever else is happening to the sensor. All on readings' own time.
"""

from __future__ import annotations

import numpy as np

from park.site import SensorKind
from rules.base import NEVER, Arrays, Context, Readings, arrays_nbytes, by_id
from rules.lifecycle import Alarm, Signal


class Fault:
    name = "fault"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        specs = ctx.specs
        has_range = any(s.range_lo is not None for s in specs)
        self.lo = np.array([np.nan if s.range_lo is None else s.range_lo for s in specs]) if has_range else None
        self.hi = np.array([np.nan if s.range_hi is None else s.range_hi for s in specs]) if has_range else None
        self.bad = np.zeros(ctx.n, bool)  # a fault alarm's condition holds
        self.flat = np.zeros(ctx.n, bool)
        self.flat_watch = np.array([not s.kind.is_boolean and s.kind is not SensorKind.POWER for s in specs], bool)
        self.changed_at = np.full(ctx.n, NEVER, np.int64)  # time of the last reading that differed
        self.last_v = np.full(ctx.n, np.nan, np.float32)  # compared in float32: a stuck value is bit-identical
        self.flat_after = int(ctx.cfg.flatline_after.total_seconds() * 1e6)

    def on_readings(self, r: Readings) -> list[Signal]:
        if not len(r):
            return []
        idx, ts, v = r.idx, r.ts, r.v
        bad = r.q == 2
        out_of_range = None
        if self.lo is not None and self.hi is not None:
            out_of_range = (v < self.lo[idx]) | (v > self.hi[idx])
            bad = bad | out_of_range
        r.good &= ~bad
        out: list[Signal] = []
        prev_bad = r.previous(bad, self.bad)
        for j in np.flatnonzero(bad != prev_bad):
            i = int(idx[j])
            if bad[j]:
                s = self.ctx.specs[i]
                cause = "bad_quality" if r.q[j] == 2 else "out_of_range"
                facts = self.ctx.facts(i) | {"cause": cause}
                if cause == "out_of_range":
                    facts |= {"range_lo": s.range_lo, "range_hi": s.range_hi}
                out.append(self.ctx.signal(i, int(ts[j]), "fault", "fault", True, "fault", value=float(v[j]),
                                           severity=self.ctx.cfg.severity.fault, facts=facts))
            else:
                out.append(self.ctx.signal(i, int(ts[j]), "fault", "fault", False, "fault", value=float(v[j])))
        last = r.last
        self.bad[idx[last]] = bad[last]
        # flat line: when did each sensor's value last change
        v32 = v.astype(np.float32)
        prev_v = r.previous(v32, self.last_v)
        changed = v32 != prev_v
        if self.flat.any():
            for j in np.flatnonzero(changed & self.flat[idx]):
                i = int(idx[j])
                if self.flat[i]:
                    self.flat[i] = False
                    out.append(self.ctx.signal(i, int(ts[j]), "flatline", "fault", False, "fault", value=float(v[j])))
        ch = np.flatnonzero(changed)
        np.maximum.at(self.changed_at, idx[ch], ts[ch])
        self.last_v[idx[last]] = v32[last]
        li, lt = idx[last], ts[last]
        cand = self.flat_watch[li] & ~self.flat[li] & (lt - self.changed_at[li] > self.flat_after)
        for i in map(int, li[cand]):
            since = int(self.changed_at[i])
            seg = np.flatnonzero(idx == i)
            j = seg[np.searchsorted(ts[seg], since + self.flat_after, side="right")]
            self.flat[i] = True
            facts = self.ctx.facts(i) | {"cause": "flatline", "since": since // 1_000_000,
                                         "flat_s": round((int(ts[j]) - since) / 1e6)}
            out.append(self.ctx.signal(i, int(ts[j]), "flatline", "fault", True, "fault", value=float(v[j]),
                                       severity=self.ctx.cfg.severity.fault, facts=facts))
        return out

    def on_tick(self, now_us: int) -> list[Signal]:
        return []

    def next_wakeup(self, now_us: int) -> int | None:
        return None

    def snapshot(self) -> Arrays:
        seen = np.flatnonzero(self.changed_at != NEVER)
        return {"sensor_id": self.ctx.ids[seen], "changed_at": self.changed_at[seen], "last_v": self.last_v[seen]}

    def restore(self, snap: Arrays) -> None:
        idx, ok = by_id(self.ctx, snap["sensor_id"])
        self.changed_at[idx[ok]] = snap["changed_at"][ok]
        self.last_v[idx[ok]] = snap["last_v"][ok]

    def adopt(self, alarm: Alarm, i: int) -> None:
        if i < 0 or alarm.rule != "fault" or not alarm.condition:
            return
        if alarm.detail.get("cause") == "flatline":
            self.flat[i] = True
        else:
            self.bad[i] = True

    def nbytes(self) -> int:
        extra = arrays_nbytes(self.lo, self.hi) if self.lo is not None and self.hi is not None else 0
        return extra + arrays_nbytes(self.bad, self.flat, self.flat_watch, self.changed_at, self.last_v)
