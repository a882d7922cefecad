"""Rate of change: a value rising (or falling) faster than the sensor's limit per minute.

A limit per minute is judged over spans of at least half a minute: the first reading in each
30-second step of reading time is compared with the first reading of the step before (or of the
last step that had one), so instrument noise between readings seconds apart is not a "rate" — and
which readings are compared depends only on their times, so a backlog is judged exactly as live.
"""

from __future__ import annotations

import numpy as np

from rules.base import NEVER, Arrays, Context, Readings, arrays_nbytes, by_id
from rules.lifecycle import Alarm, Signal

SPAN_US = 30_000_000


class Rate:
    name = "rate"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        members = [i for i, s in enumerate(ctx.specs) if s.rise_per_min is not None or s.fall_per_min is not None]
        self.members = np.array(members, np.int32)
        self.slot = np.full(ctx.n, -1, np.int32) if members else None
        if self.slot is not None:
            self.slot[self.members] = np.arange(len(members), dtype=np.int32)
        specs = ctx.specs
        self.rise = np.array([np.inf if specs[i].rise_per_min is None else specs[i].rise_per_min for i in members])
        self.fall = np.array([np.inf if specs[i].fall_per_min is None else specs[i].fall_per_min for i in members])
        self.prev_ts = np.full(len(members), NEVER, np.int64)
        self.prev_v = np.full(len(members), np.nan)
        self.state = np.zeros(len(members), np.int8)  # +1 rising too fast, -1 falling too fast
        self.last_minute = np.full(len(members), -1, np.int64)

    def on_readings(self, r: Readings) -> list[Signal]:
        if self.slot is None or not len(r):
            return []
        slot = self.slot[r.idx]
        m = (slot >= 0) & r.good
        if not m.any():
            return []
        pos = np.flatnonzero(m)
        sl, ts = slot[pos], r.ts[pos]
        minute = ts // SPAN_US
        first = np.ones(len(pos), bool)
        first[1:] = sl[1:] != sl[:-1]
        prev_minute = np.empty_like(minute)
        prev_minute[1:] = minute[:-1]
        prev_minute[first] = self.last_minute[sl[first]]
        point = np.flatnonzero(minute != prev_minute)  # the first reading of each step
        if not len(point):
            return []
        pos, sl, ts, minute = pos[point], sl[point], ts[point], minute[point]
        v = r.v[pos]
        first = np.ones(len(pos), bool)
        first[1:] = sl[1:] != sl[:-1]
        pt = np.empty_like(ts)
        pv = np.empty_like(v)
        pt[1:], pv[1:] = ts[:-1], v[:-1]
        pt[first], pv[first] = self.prev_ts[sl[first]], self.prev_v[sl[first]]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_min = np.where(pt != NEVER, (v - pv) / ((ts - pt) / 60e6), 0.0)
        per_min = np.nan_to_num(per_min, nan=0.0, posinf=0.0, neginf=0.0)
        state = np.zeros(len(pos), np.int8)
        state[per_min > self.rise[sl]] = 1
        state[-per_min > self.fall[sl]] = -1
        prev_state = np.empty_like(state)
        prev_state[1:] = state[:-1]
        prev_state[first] = self.state[sl[first]]
        out: list[Signal] = []
        sv = self.ctx.cfg.severity.rate
        for k in np.flatnonzero(state != prev_state):
            i = int(self.members[sl[k]])
            st = int(state[k])
            if st == 0:
                out.append(self.ctx.signal(i, int(ts[k]), "rate", "rate", False, "rate", value=float(v[k])))
                continue
            s = self.ctx.specs[i]
            lim = s.rise_per_min if st > 0 else s.fall_per_min
            facts = self.ctx.facts(i) | {"per_min": round(float(per_min[k]), 4),
                                         "direction": "up" if st > 0 else "down"}
            out.append(self.ctx.signal(i, int(ts[k]), "rate", "rate", True, "rate", value=float(v[k]), limit=lim,
                                       severity=sv, facts=facts))
        last = np.ones(len(pos), bool)
        last[:-1] = first[1:]
        ls = sl[last]
        self.prev_ts[ls], self.prev_v[ls], self.state[ls] = ts[last], v[last], state[last]
        self.last_minute[ls] = minute[last]
        return out

    def on_tick(self, now_us: int) -> list[Signal]:
        return []

    def next_wakeup(self, now_us: int) -> int | None:
        return None

    def snapshot(self) -> Arrays:
        return {"sensor_id": self.ctx.ids[self.members], "prev_ts": self.prev_ts, "prev_v": self.prev_v,
                "last_minute": self.last_minute}

    def restore(self, snap: Arrays) -> None:
        if self.slot is None:
            return
        idx, ok = by_id(self.ctx, snap["sensor_id"])
        sl = self.slot[idx[ok]]
        keep = sl >= 0
        self.prev_ts[sl[keep]] = snap["prev_ts"][ok][keep]
        self.prev_v[sl[keep]] = snap["prev_v"][ok][keep]
        self.last_minute[sl[keep]] = snap["last_minute"][ok][keep]

    def adopt(self, alarm: Alarm, i: int) -> None:
        if self.slot is not None and i >= 0 and alarm.rule == "rate" and alarm.condition and self.slot[i] >= 0:
            self.state[self.slot[i]] = 1 if alarm.detail.get("direction", "up") == "up" else -1

    def nbytes(self) -> int:
        base = arrays_nbytes(self.slot) if self.slot is not None else 0
        return base + arrays_nbytes(self.members, self.rise, self.fall, self.prev_ts, self.prev_v, self.state,
                                    self.last_minute)
