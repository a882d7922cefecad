"""Switch alarms of dust-explosion plants: spark detection (fire: red, latching, never suppressed)
and fault signals (airlock, ash discharge, interlock: latching when the site file says so).

A switch is on at 1 (true) and off at 0; run-state switches never alarm by themselves.
"""

from __future__ import annotations

import numpy as np

from park.site import SensorKind
from rules.base import Arrays, Context, Readings, arrays_nbytes
from rules.lifecycle import Alarm, Signal

RULES = {SensorKind.SPARK_DETECTOR: "spark", SensorKind.FAULT_SIGNAL: "fault_signal"}


class Dust:
    name = "dust"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.watch = np.array([s.kind in RULES for s in ctx.specs], bool)
        self.on = np.zeros(ctx.n, bool)

    def on_readings(self, r: Readings) -> list[Signal]:
        m = self.watch[r.idx] & r.good
        if not m.any():
            return []
        state = r.v >= 0.5
        prev = r.previous(state, self.on)
        change = np.flatnonzero(m & (state != prev))
        out = []
        sv = self.ctx.cfg.severity
        for j in change:
            i, on = int(r.idx[j]), bool(state[j])
            s = self.ctx.specs[i]
            rule = RULES[s.kind]
            sev = sv.spark if rule == "spark" else sv.fault_signal
            out.append(self.ctx.signal(i, int(r.ts[j]), rule, rule, on, "dust", value=float(r.v[j]), severity=sev,
                                       facts=self.ctx.facts(i), latching=rule == "spark" or s.latching))
        last = m & r.last
        self.on[r.idx[last]] = state[last]
        return out

    def on_tick(self, now_us: int) -> list[Signal]:
        return []

    def next_wakeup(self, now_us: int) -> int | None:
        return None

    def snapshot(self) -> Arrays:
        return {}

    def restore(self, snap: Arrays) -> None:
        pass

    def adopt(self, alarm: Alarm, i: int) -> None:
        if i >= 0 and alarm.rule in ("spark", "fault_signal") and alarm.condition:
            self.on[i] = True

    def nbytes(self) -> int:
        return arrays_nbytes(self.watch, self.on)
