"""Enterprise power monitoring (企业安全生产电力监测): load above the approved capacity, and
production while ordered to stop or in maintenance, judged against a baseline learned from the
enterprise's own running history.

The baseline is kept per hour of the week (168 values): each hour's mean load while running is
folded into that hour's baseline as an exponentially weighted average over ``power_learning_weeks``.
"""

from __future__ import annotations

import numpy as np

from park.site import EnterpriseState, SensorKind
from rules.base import Arrays, Context, Readings, arrays_nbytes, by_id
from rules.lifecycle import Alarm, Signal

HOUR_US = 3_600_000_000


def hour_of_week(hour_index: int) -> int:
    """Hours since the epoch -> hour of the week, Monday 00:00 UTC = 0 (1970-01-01 was a Thursday)."""
    return int((hour_index + 72) % 168)


class Power:
    name = "power"

    def __init__(self, ctx: Context, ent_state: dict[str, EnterpriseState]) -> None:
        self.ctx = ctx
        self.ent_state = ent_state
        members = [i for i, s in enumerate(ctx.specs) if s.kind is SensorKind.POWER]
        self.members = np.array(members, np.int32)
        self.slot = {i: k for k, i in enumerate(members)}
        m = len(members)
        self.base = np.full((m, 168), np.nan, np.float32)
        self.acc_hour = np.full(m, -1, np.int64)  # the hour being averaged (hours since the epoch)
        self.acc_sum = np.zeros(m)
        self.acc_n = np.zeros(m, np.int32)
        self.on = np.zeros(m, bool)
        self.is_member = np.zeros(ctx.n, bool)
        self.is_member[self.members] = True
        approved = [ctx.park.enterprises[ctx.specs[i].enterprise].approved_load_kw for i in members]
        self.approved = np.array([np.inf if a is None else a for a in approved])
        self._version: int | None = None
        self._stopped_set: set[str] = set()

    def on_readings(self, r: Readings) -> list[Signal]:
        if not len(self.members) or not len(r):
            return []
        pos = np.flatnonzero(self.is_member[r.idx] & r.good)
        if not len(pos):
            return []
        k = np.searchsorted(self.members, r.idx[pos])
        ts, v = r.ts[pos], r.v[pos]
        stopped = self._stopped()
        # the usual case, vectorised: a running plant within capacity, same hour, no alarm
        busy = (ts // HOUR_US != self.acc_hour[k]) | (v > self.approved[k]) | self.on[k]
        if stopped:
            busy |= np.array([self.ctx.specs[int(i)].enterprise in stopped for i in r.idx[pos]], bool)
        out: list[Signal] = []
        if busy.any():
            busy = np.isin(k, k[busy])
            for j in np.flatnonzero(busy):  # in time order per meter
                self._one(int(r.idx[pos[j]]), int(ts[j]), float(v[j]), out)
        calm = ~busy
        np.add.at(self.acc_sum, k[calm], v[calm])
        np.add.at(self.acc_n, k[calm], 1)
        return out

    def _stopped(self) -> set[str]:
        version = getattr(self.ent_state, "version", None)
        if version is None or version != self._version:
            self._stopped_set = {e for e, st in self.ent_state.items() if st is not EnterpriseState.RUNNING}
            self._version = version
        return self._stopped_set

    def _one(self, i: int, ts: int, v: float, out: list[Signal]) -> None:
        k = self.slot[i]
        s = self.ctx.specs[i]
        state = self.ent_state.get(s.enterprise, EnterpriseState.RUNNING)
        hour = ts // HOUR_US
        if hour != self.acc_hour[k]:
            if self.acc_n[k] and self.acc_hour[k] >= 0:
                mean = self.acc_sum[k] / self.acc_n[k]
                h = hour_of_week(int(self.acc_hour[k]))
                alpha = 1.0 / self.ctx.cfg.power_learning_weeks
                b = self.base[k, h]
                self.base[k, h] = mean if not np.isfinite(b) else (1 - alpha) * b + alpha * mean
            self.acc_hour[k], self.acc_sum[k], self.acc_n[k] = hour, 0.0, 0
        if state is EnterpriseState.RUNNING:
            self.acc_sum[k] += v
            self.acc_n[k] += 1
        ent = self.ctx.park.enterprises.get(s.enterprise)
        approved = ent.approved_load_kw if ent else None
        facts = self.ctx.facts(i) | {"enterprise_state": state.value}
        reason = None
        if approved is not None and v > approved:
            reason = "over_capacity"
            facts |= {"approved_kw": approved}
        elif state is not EnterpriseState.RUNNING:
            # a stopped plant drawing a good part of its usual production load for this hour is producing
            b = float(self.base[k, hour_of_week(int(hour))])
            threshold = max(self.ctx.cfg.power_min_load_kw,
                            b * self.ctx.cfg.power_stopped_fraction if np.isfinite(b) else 0.0)
            if v > threshold:
                reason = "load_while_stopped"
                facts |= {"threshold_kw": round(threshold, 1), "baseline_kw": round(b, 1) if np.isfinite(b) else None}
        if reason:
            self.on[k] = True
            out.append(self.ctx.signal(i, ts, "power", "power", True, "power", value=v, limit=approved,
                                       severity=self.ctx.cfg.severity.power, facts=facts | {"reason": reason}))
        elif self.on[k]:
            self.on[k] = False
            out.append(self.ctx.signal(i, ts, "power", "power", False, "power", value=v))

    def on_tick(self, now_us: int) -> list[Signal]:
        return []

    def next_wakeup(self, now_us: int) -> int | None:
        return None

    def snapshot(self) -> Arrays:
        return {"sensor_id": self.ctx.ids[self.members], "base": self.base, "acc_hour": self.acc_hour,
                "acc_sum": self.acc_sum, "acc_n": self.acc_n}

    def restore(self, snap: Arrays) -> None:
        idx, ok = by_id(self.ctx, snap["sensor_id"])
        for row, i in zip(np.flatnonzero(ok), idx[ok], strict=True):
            k = self.slot.get(int(i))
            if k is not None:
                self.base[k] = snap["base"][row]
                self.acc_hour[k], self.acc_sum[k], self.acc_n[k] = (snap["acc_hour"][row], snap["acc_sum"][row],
                                                                    snap["acc_n"][row])

    def adopt(self, alarm: Alarm, i: int) -> None:
        if alarm.rule == "power" and alarm.condition and i in self.slot:
            self.on[self.slot[i]] = True

    def nbytes(self) -> int:
        return arrays_nbytes(self.members, self.base, self.acc_hour, self.acc_sum, self.acc_n, self.on, self.is_member)
