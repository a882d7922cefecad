"""The rule engine: readings and ticks in, alarm transitions out. Pure: no IO, the clock injected.

Per-sensor state lives in numpy arrays indexed by a dense index. A batch is judged in one
vectorised pass; only the readings whose threshold level differs from the sensor's current
level (or sensors with per-reading rules: rate, power, instrument range, pending delays) go
through Python, so normal operation costs a few array operations per batch.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from park.model import Park, SensorSpec
from park.site import AlarmManagement, EnterpriseState, SensorKind
from park.types import AlarmEventKind as K
from park.types import GatewayStatus, ReadingBatch, Severity, epoch_us, from_epoch_us
from rules.errors import AlarmNotFound, InvalidTransition
from rules.lifecycle import (
    ACTIVE_ACKED,
    ACTIVE_UNACKED,
    CLEARED_UNACKED,
    CLOSED,
    Alarm,
    Transition,
)

NEVER = np.iinfo(np.int64).min
TREND_K = 24  # samples kept per trend-watched sensor
PROCESS_RULES = frozenset({"high", "low", "rate", "trend", "vote", "spark", "fault_signal"})
_LEVEL_NAMES = {2: "HH", 1: "H", -1: "L", -2: "LL"}


def _f(v: float | None) -> float:
    return np.nan if v is None else float(v)


class RuleEngine:
    """Judges readings of ``park``'s sensors; see module docstring."""

    def __init__(self, park: Park, config: AlarmManagement | None = None) -> None:
        self.park = park
        self.cfg = config or park.site.alarm_management
        specs = park.sensors
        self.specs = specs
        n = len(specs)
        max_id = max((s.id for s in specs), default=0)
        self.idx_of = np.full(max_id + 2, -1, np.int32)
        for i, s in enumerate(specs):
            self.idx_of[s.id] = i
        boolean_alarm = np.array([s.kind in (SensorKind.SPARK_DETECTOR, SensorKind.FAULT_SIGNAL) for s in specs], bool)
        self.hh = np.array([_f(s.limits.hh) for s in specs])
        self.h = np.array([_f(s.limits.h) if not b else 0.5 for s, b in zip(specs, boolean_alarm, strict=True)])
        self.low = np.array([_f(s.limits.l) for s in specs])
        self.ll = np.array([_f(s.limits.ll) for s in specs])
        self.deadband = np.array([s.deadband if s.deadband is not None else self._default_deadband(s) for s in specs])
        self.in_service = np.array([s.in_service for s in specs], bool)
        self.interval_us = np.array([s.interval.total_seconds() * 1e6 for s in specs])
        self.level = np.zeros(n, np.int8)
        self.last_ts = np.full(n, NEVER, np.int64)
        self.last_value = np.full(n, np.nan)
        self.last_seen = np.full(n, NEVER, np.int64)
        self.changed_at = np.full(n, NEVER, np.int64)
        self.stale = np.zeros(n, bool)
        self.flat = np.zeros(n, bool)
        self.flat_watch = np.array([not s.kind.is_boolean and s.kind is not SensorKind.POWER for s in specs], bool)
        self.slow = np.array([s.rise_per_min is not None or s.fall_per_min is not None or s.kind is SensorKind.POWER
                              or s.range_lo is not None or s.range_hi is not None or bool(s.on_delay)
                              or bool(s.off_delay) for s in specs], bool)
        self.pending: dict[int, tuple[int, int]] = {}  # idx -> (target level, since µs): on/off delays
        self.rate_ts = np.full(n, NEVER, np.int64)  # the rate rule's previous reading, kept apart from the
        self.rate_v = np.full(n, np.nan)  # batch-level state that flat-line detection relies on
        # trend: ring buffers for analog sensors with an HH or LL limit and trend not disabled
        trend_ok = [(not s.kind.is_boolean and s.kind is not SensorKind.POWER and s.trend_horizon is not None
                     and any(v is not None for _k, v in s.limits.items())) for s in specs]
        self.trend_idx = np.array([i for i, ok in enumerate(trend_ok) if ok], np.int32)
        self.trend_slot = np.full(n, -1, np.int32)
        self.trend_slot[self.trend_idx] = np.arange(len(self.trend_idx), dtype=np.int32)
        self.trend_ts = np.full((len(self.trend_idx), TREND_K), np.nan)
        self.trend_v = np.full((len(self.trend_idx), TREND_K), np.nan)
        self.trend_pos = np.zeros(len(self.trend_idx), np.int32)
        self.trend_last = np.full(len(self.trend_idx), -np.inf)  # seconds of the newest sample
        self.trend_every = np.array([(specs[i].trend_window or self.cfg.trend_window).total_seconds() / TREND_K
                                     for i in self.trend_idx])
        self.trend_on = np.zeros(n, bool)
        # enterprise grouping (sensors are contiguous per enterprise in park order)
        self.ent_state: dict[str, EnterpriseState] = {e: ent.state for e, ent in park.enterprises.items()}
        self.ent_offline: set[str] = set()
        self.ent_of = [s.enterprise for s in specs]
        self.ent_last_seen: dict[str, int] = dict.fromkeys(park.enterprises, NEVER)
        # voting groups: hazard source -> gas sensor indices
        self.vote_groups: dict[tuple[str, str], tuple[int, list[int]]] = {}
        for e, ent in park.enterprises.items():
            for hs in ent.hazard_sources:
                if hs.vote_k:
                    members = [i for i, s in enumerate(specs) if s.enterprise == e and s.hazard_source == hs.code
                               and s.kind in (SensorKind.GAS_COMBUSTIBLE, SensorKind.GAS_TOXIC)]
                    if len(members) >= hs.vote_k:
                        self.vote_groups[(e, hs.code)] = (hs.vote_k, members)
        self.vote_of: dict[int, tuple[str, str]] = {i: g for g, (_k, m) in self.vote_groups.items() for i in m}
        # power baselines: hour of week (168) EWMA per power sensor, learned while running
        self.power_base: dict[int, np.ndarray] = {i: np.full(168, np.nan) for i, s in enumerate(specs)
                                                  if s.kind is SensorKind.POWER}
        self.alarms: dict[str, Alarm] = {}  # open alarms by key
        self.by_id: dict[int, Alarm] = {}
        self.raise_history: dict[str, deque[datetime]] = defaultdict(deque)
        self.flood_history: dict[str, deque[datetime]] = defaultdict(deque)
        self.flooding: set[str] = set()
        self.out: list[Transition] = []

    def _default_deadband(self, s: SensorSpec) -> float:
        lims = [abs(v) for _k, v in s.limits.items() if v]
        return (min(lims) if lims else 0.0) * self.cfg.deadband_fraction

    # --- readings -----------------------------------------------------------------------------
    def on_batch(self, batch: ReadingBatch) -> list[Transition]:
        self.out = []
        if len(batch) == 0:
            return self.out
        sid = batch.sensor_id
        ok = sid < len(self.idx_of)
        idx = np.where(ok, self.idx_of[np.where(ok, sid, 0)], -1)
        keep = idx >= 0
        if not keep.all():
            idx, ts, val, q = idx[keep], batch.ts_us[keep], batch.value[keep], batch.quality[keep]
        else:
            ts, val, q = batch.ts_us, batch.value, batch.quality
        if len(idx) == 0:
            return self.out
        order = np.lexsort((ts, idx))
        idx, ts, val, q = idx[order], ts[order], val[order], q[order]
        np.maximum.at(self.last_seen, idx, ts)
        # judged only when newer than what this sensor was last judged on (redelivery, out of order)
        fresh = (ts > self.last_ts[idx]) & self.in_service[idx]
        if not fresh.all():
            idx, ts, val, q = idx[fresh], ts[fresh], val[fresh], q[fresh]
        if len(idx) == 0:
            return self.out
        raw = np.zeros(len(idx), np.int8)
        raw[val >= self.h[idx]] = 1
        raw[val >= self.hh[idx]] = 2
        raw[val <= self.low[idx]] = -1
        raw[val <= self.ll[idx]] = -2
        interesting = (raw != self.level[idx]) | self.slow[idx] | (q == 2) | self.stale[idx] | self.flat[idx]
        if self.pending:
            interesting |= np.isin(idx, np.fromiter(self.pending, np.int32, len(self.pending)))
        if interesting.any():
            # every reading of a sensor that changes in this batch, in time order (a spike inside a batch)
            interesting = np.isin(idx, idx[interesting])
        for j in np.flatnonzero(interesting):
            self._judge(int(idx[j]), int(ts[j]), float(val[j]), int(q[j]))
        # the newest reading of each sensor becomes its state
        last = np.flatnonzero(np.r_[idx[1:] != idx[:-1], True])
        li, lt, lv = idx[last], ts[last], val[last]
        changed = lv != self.last_value[li]
        self.changed_at[li[changed]] = lt[changed]
        self.changed_at[li[self.changed_at[li] == NEVER]] = lt[self.changed_at[li] == NEVER]
        self.last_ts[li] = lt
        self.last_value[li] = lv
        if len(self.trend_idx):
            self._trend(li, lt, lv)
        return self.out

    def _judge(self, i: int, ts: int, v: float, q: int) -> None:
        s = self.specs[i]
        when = from_epoch_us(ts)
        if self.stale[i]:
            self.stale[i] = False
            self._clear(f"s:{s.id}:stale", when, v)
        if self.flat[i] and v != self.last_value[i]:
            self.flat[i] = False
            self._clear(f"s:{s.id}:flatline", when, v)
        # instrument fault: bad quality or outside the instrument's range; never judged on limits
        out_of_range = (s.range_lo is not None and v < s.range_lo) or (s.range_hi is not None and v > s.range_hi)
        fkey = f"s:{s.id}:fault"
        if q == 2 or out_of_range:
            why = "仪表故障（质量位=坏值）" if q == 2 else f"超出量程 {s.range_lo}–{s.range_hi}"
            self._raise(fkey, "fault", s, self.cfg.severity.fault, when, v, None, f"{s.display_name} {why}")
            return
        if fkey in self.alarms and self.alarms[fkey].condition:
            self._clear(fkey, when, v)
        self._threshold(i, s, ts, when, v)
        if s.rise_per_min is not None or s.fall_per_min is not None:
            self._rate(i, s, ts, when, v)
        if s.kind is SensorKind.POWER:
            self._power(i, s, ts, when, v)

    def _target_level(self, i: int, v: float) -> int:
        cur = int(self.level[i])
        db = float(self.deadband[i])
        hh, h, lo, ll = self.hh[i], self.h[i], self.low[i], self.ll[i]
        if v >= hh or (cur >= 2 and v > hh - db):
            return 2
        if v >= h or (cur >= 1 and v > h - db):
            return 1
        if v <= ll or (cur <= -2 and v < ll + db):
            return -2
        if v <= lo or (cur <= -1 and v < lo + db):
            return -1
        return 0

    def _threshold(self, i: int, s: SensorSpec, ts: int, when: datetime, v: float) -> None:
        cur = int(self.level[i])
        target = self._target_level(i, v)
        if target == cur:
            self.pending.pop(i, None)
            return
        worse = abs(target) > abs(cur) or (target * cur < 0)
        delay = (s.on_delay or self.cfg.on_delay) if worse else (s.off_delay or self.cfg.off_delay)
        delay_us = int(delay.total_seconds() * 1e6)
        if delay_us > 0:
            pend = self.pending.get(i)
            if pend is None or pend[0] != target:
                self.pending[i] = (target, ts)
                return
            if ts - pend[1] < delay_us:
                return
        self.pending.pop(i, None)
        self._set_level(i, s, target, when, v)

    def _set_level(self, i: int, s: SensorSpec, new: int, when: datetime, v: float) -> None:
        self.level[i] = new
        hi_key, lo_key = f"s:{s.id}:high", f"s:{s.id}:low"
        if s.kind in (SensorKind.SPARK_DETECTOR, SensorKind.FAULT_SIGNAL):
            rule = "spark" if s.kind is SensorKind.SPARK_DETECTOR else "fault_signal"
            key = f"s:{s.id}:{rule}"
            if new > 0:
                sev = self.cfg.severity.spark if rule == "spark" else self.cfg.severity.fault_signal
                text = "火花探测报警" if rule == "spark" else "故障信号"
                self._raise(key, rule, s, sev, when, v, None, f"{s.display_name} {text}",
                            latching=rule == "spark" or s.latching)
            else:
                self._clear(key, when, v)
        else:
            if new > 0:
                self._raise(hi_key, "high", s, self._severity(s, new), when, v, self._limit(i, new),
                            self._message(s, new, v, self._limit(i, new)), latching=s.latching,
                            detail={"level": _LEVEL_NAMES[new]})
            else:
                self._clear(hi_key, when, v)
            if new < 0:
                self._raise(lo_key, "low", s, self._severity(s, new), when, v, self._limit(i, new),
                            self._message(s, new, v, self._limit(i, new)), latching=s.latching,
                            detail={"level": _LEVEL_NAMES[new]})
            else:
                self._clear(lo_key, when, v)
            if new != 0 and self.trend_on[i]:
                self.trend_on[i] = False  # the limit alarm takes over from the early warning
                self._clear(f"s:{s.id}:trend", when, v)
        if i in self.vote_of:
            self._vote(self.vote_of[i], when)

    def _severity(self, s: SensorSpec, level: int) -> Severity:
        sv = self.cfg.severity
        if abs(level) == 1:
            return sv.first_level
        if s.kind is SensorKind.GAS_TOXIC:
            return sv.toxic_second_level
        if s.hazard_grade is not None and s.hazard_grade <= 2:
            return sv.hh_on_major_hazard
        return sv.second_level

    def _limit(self, i: int, level: int) -> float:
        return float({2: self.hh, 1: self.h, -1: self.low, -2: self.ll}[level][i])

    def _message(self, s: SensorSpec, level: int, v: float, limit: float) -> str:
        if s.kind is SensorKind.GAS_COMBUSTIBLE:
            name = {1: "一级报警", 2: "二级报警"}.get(level, _LEVEL_NAMES[level])
        elif s.kind is SensorKind.GAS_TOXIC:
            name = {1: "一级报警(1×OEL)", 2: "二级报警(2×OEL)"}.get(level, _LEVEL_NAMES[level])
        else:
            name = {2: "高高报", 1: "高报", -1: "低报", -2: "低低报"}[level]
        return f"{s.display_name}({s.tag}) {name}：{v:g} {s.unit}，限值 {limit:g} {s.unit}"

    def _rate(self, i: int, s: SensorSpec, ts: int, when: datetime, v: float) -> None:
        prev_ts, prev_v = int(self.rate_ts[i]), float(self.rate_v[i])
        self.rate_ts[i], self.rate_v[i] = ts, v
        if prev_ts == NEVER or ts <= prev_ts:
            return
        per_min = (v - prev_v) / ((ts - prev_ts) / 60e6)
        key = f"s:{s.id}:rate"
        if s.rise_per_min is not None and per_min > s.rise_per_min:
            self._raise(key, "rate", s, self.cfg.severity.rate, when, v, s.rise_per_min,
                        f"{s.display_name}({s.tag}) 上升过快：{per_min:.3g} {s.unit}/分钟，限值 {s.rise_per_min:g}",
                        detail={"per_min": per_min})
        elif s.fall_per_min is not None and -per_min > s.fall_per_min:
            self._raise(key, "rate", s, self.cfg.severity.rate, when, v, s.fall_per_min,
                        f"{s.display_name}({s.tag}) 下降过快：{per_min:.3g} {s.unit}/分钟，限值 {s.fall_per_min:g}",
                        detail={"per_min": per_min})
        elif key in self.alarms and self.alarms[key].condition:
            self._clear(key, when, v)

    def _power(self, i: int, s: SensorSpec, ts: int, when: datetime, v: float) -> None:
        hour = int(((ts // 3_600_000_000) + 72) % 168)  # hour of week, Monday 00:00 UTC = 0
        base = self.power_base[i]
        state = self.ent_state.get(s.enterprise, EnterpriseState.RUNNING)
        ent = self.park.enterprises.get(s.enterprise)
        approved = ent.approved_load_kw if ent else None
        key = f"s:{s.id}:power"
        reason = None
        if approved is not None and v > approved:
            reason = f"超核定负荷：{v:g} kW > {approved:g} kW"
        elif state is not EnterpriseState.RUNNING:
            # a stopped plant drawing a good part of its usual production load for this hour is producing
            b = base[hour]
            threshold = max(self.cfg.power_min_load_kw,
                            float(b) * self.cfg.power_stopped_fraction if np.isfinite(b) else 0.0)
            if v > threshold:
                what = "停产期间" if state is EnterpriseState.STOPPED else "检修期间"
                reason = f"{what}用电负荷 {v:g} kW 超过停产基线 {threshold:g} kW，疑似违规生产"
        if state is EnterpriseState.RUNNING:
            alpha = 1.0 / self.cfg.power_learning_weeks
            base[hour] = v if not np.isfinite(base[hour]) else (1 - alpha) * base[hour] + alpha * v
        if reason:
            self._raise(key, "power", s, self.cfg.severity.power, when, v, approved, f"{s.display_name} {reason}",
                        detail={"enterprise_state": state.value})
        elif key in self.alarms and self.alarms[key].condition:
            self._clear(key, when, v)

    def _vote(self, group: tuple[str, str], when: datetime) -> None:
        k, members = self.vote_groups[group]
        above = [m for m in members if self.level[m] >= 1]
        key = f"h:{group[0]}:{group[1]}:vote"
        if len(above) >= k:
            hs = group[1]
            s0 = self.specs[above[0]]
            tags = ",".join(self.specs[m].tag for m in above)
            self._raise(key, "vote", None, self.cfg.severity.vote, when, None, float(k),
                        f"{hs} {len(above)}/{len(members)} 个气体探测器同时报警（{tags}），确认泄漏",
                        enterprise=s0.enterprise, detail={"hazard_source": hs, "tags": tags})
        elif key in self.alarms and self.alarms[key].condition:
            self._clear(key, when, None)

    def _trend(self, li: np.ndarray, lt: np.ndarray, lv: np.ndarray) -> None:
        slots = self.trend_slot[li]
        m = slots >= 0
        if not m.any():
            return
        ti, slot, t_us, v = li[m], slots[m], lt[m], lv[m]
        # keep samples spread over the window, so the slope is not the noise between close readings
        due = t_us / 1e6 - self.trend_last[slot] >= self.trend_every[slot]
        ds = slot[due]
        pos = self.trend_pos[ds]
        self.trend_ts[ds, pos] = t_us[due] / 1e6
        self.trend_v[ds, pos] = v[due]
        self.trend_pos[ds] = (pos + 1) % TREND_K
        self.trend_last[ds] = t_us[due] / 1e6
        # only sensors below their limits, on the way to one, are worth a projection
        cand = (self.level[ti] == 0)
        if not cand.any():
            return
        ti, slot, now_s, v = ti[cand], slot[cand], t_us[cand] / 1e6, v[cand]
        ts_w, v_w = self.trend_ts[slot], self.trend_v[slot]
        window = np.array([(self.specs[i].trend_window or self.cfg.trend_window).total_seconds() for i in ti])
        valid = np.isfinite(ts_w) & (ts_w >= (now_s - window)[:, None])
        enough = valid.sum(axis=1) >= self.cfg.trend_min_points
        # robust slope (Theil–Sen style): the median of the slopes between pairs of points 2..K/2 apart
        slopes_parts = []
        with np.errstate(invalid="ignore", divide="ignore"):
            for off in range(2, TREND_K // 2 + 1):
                dt = np.roll(ts_w, -off, axis=1) - ts_w
                dv = np.roll(v_w, -off, axis=1) - v_w
                ok = valid & np.roll(valid, -off, axis=1) & (dt != 0)
                slopes_parts.append(np.where(ok, dv / np.where(ok, dt, 1), np.nan))
            slopes = np.concatenate(slopes_parts, axis=1)
            have = np.isfinite(slopes).sum(axis=1) >= 3
            slope = np.full(len(ti), np.nan)
            if have.any():
                slope[have] = np.nanmedian(slopes[have], axis=1)
        for j in np.flatnonzero(enough):
            i = int(ti[j])
            s = self.specs[i]
            sl = float(slope[j])
            horizon = (s.trend_horizon or self.cfg.trend_horizon).total_seconds()
            eta = np.inf
            target = None
            # the first limit not yet crossed: warn before any limit is reached
            up = self.h[i] if np.isfinite(self.h[i]) else self.hh[i]
            down = self.low[i] if np.isfinite(self.low[i]) else self.ll[i]
            if np.isfinite(sl) and sl > 0 and np.isfinite(up):
                eta, target = (up - v[j]) / sl, float(up)
            elif np.isfinite(sl) and sl < 0 and np.isfinite(down):
                eta, target = (v[j] - down) / -sl, float(down)
            key = f"s:{s.id}:trend"
            when = from_epoch_us(int(now_s[j] * 1e6))
            if target is not None and 0 < eta <= horizon:
                self.trend_on[i] = True
                mins = eta / 60
                eta_at = when + timedelta(seconds=float(eta))
                self._raise(key, "trend", s, self.cfg.severity.trend, when, float(v[j]), target,
                            f"{s.display_name}({s.tag}) 趋势预警：按当前速率约 {mins:.0f} 分钟后"
                            f"达到限值 {target:g} {s.unit}",
                            detail={"eta_seconds": round(float(eta)), "eta_at": eta_at.isoformat(),
                                    "slope_per_min": sl * 60})
            elif self.trend_on[i] and (target is None or eta > 1.5 * horizon):
                self.trend_on[i] = False
                self._clear(key, when, float(v[j]))

    # --- status and time ----------------------------------------------------------------------
    def on_status(self, status: GatewayStatus) -> list[Transition]:
        self.out = []
        key = f"e:{status.enterprise}:comm_loss"
        if status.enterprise not in self.park.enterprises:
            return self.out
        if not status.online:
            self.ent_offline.add(status.enterprise)
            name = self.park.enterprises[status.enterprise].name
            self._raise(key, "comm_loss", None, self.cfg.severity.comm_loss, status.ts, None, None,
                        f"{name} 数据网关离线（通信中断）", enterprise=status.enterprise,
                        detail={"cause": "gateway_offline"})
        else:
            self.ent_offline.discard(status.enterprise)
            self._clear(key, status.ts, None)
        return self.out

    def on_tick(self, now: datetime) -> list[Transition]:
        """Time-based rules: delays, stale data, communication loss, flat lines, shelving, chatter holds."""
        self.out = []
        now_us = epoch_us(now)
        for i, (target, since) in list(self.pending.items()):
            s = self.specs[i]
            worse = abs(target) > abs(int(self.level[i]))
            delay = (s.on_delay or self.cfg.on_delay) if worse else (s.off_delay or self.cfg.off_delay)
            if now_us - since >= delay.total_seconds() * 1e6:
                self.pending.pop(i)
                self._set_level(i, s, target, now, float(self.last_value[i]))
        seen = self.last_seen != NEVER
        newly_stale = seen & ~self.stale & self.in_service & (
            now_us - self.last_seen > self.interval_us * self.cfg.stale_multiple)
        for i in map(int, np.flatnonzero(newly_stale)):
            s = self.specs[i]
            if s.enterprise in self.ent_offline:
                continue  # the gateway alarm says it already
            self.stale[i] = True
            age = (now_us - int(self.last_seen[i])) / 60e6
            self._raise(f"s:{s.id}:stale", "stale", s, self.cfg.severity.stale, now, None, None,
                        f"{s.display_name}({s.tag}) 数据中断 {age:.0f} 分钟")
        flat_after = self.cfg.flatline_after.total_seconds() * 1e6
        newly_flat = (self.changed_at != NEVER) & ~self.flat & self.flat_watch & self.in_service & (
            now_us - self.changed_at > flat_after) & (now_us - self.last_seen < flat_after)
        for i in map(int, np.flatnonzero(newly_flat)):
            s = self.specs[i]
            self.flat[i] = True
            self._raise(f"s:{s.id}:flatline", "fault", s, self.cfg.severity.fault, now, float(self.last_value[i]),
                        None, f"{s.display_name}({s.tag}) 数值长时间不变，疑似仪表卡死",
                        detail={"cause": "flatline"})
        # communication loss: nothing at all from an enterprise for a while
        if len(self.specs):
            for e in self.park.enterprises:
                self.ent_last_seen[e] = NEVER
            for i in map(int, np.flatnonzero(seen)):
                e = self.ent_of[i]
                if self.last_seen[i] > self.ent_last_seen[e]:
                    self.ent_last_seen[e] = int(self.last_seen[i])
            limit = self.cfg.comm_loss_after.total_seconds() * 1e6
            for e, last in self.ent_last_seen.items():
                key = f"e:{e}:comm_loss"
                held = self.alarms.get(key)
                if last != NEVER and now_us - last > limit and (held is None or not held.condition):
                    self._raise(key, "comm_loss", None, self.cfg.severity.comm_loss, now, None, None,
                                f"{self.park.enterprises[e].name} {limit / 60e6:.0f} 分钟无数据（通信中断）",
                                enterprise=e, detail={"cause": "no_data"})
                elif (key in self.alarms and self.alarms[key].detail.get("cause") == "no_data"
                      and last != NEVER and now_us - last <= limit):
                    self._clear(key, now, None)
        for a in list(self.alarms.values()):
            if a.shelved_until is not None and now >= a.shelved_until:
                a.shelved_until = None
                self._emit(a, K.UNSHELVED, now)
            if a.clear_pending and a.hold_until is not None and now >= a.hold_until:
                a.clear_pending = False
                self._clear(a.key, now, a.value, force=True)
        for scope in list(self.flooding):
            hist = self.flood_history[scope]
            while hist and now - hist[0] > self.cfg.flood_window:
                hist.popleft()
            if len(hist) < self.cfg.flood_count // 2:
                self.flooding.discard(scope)
                self.out.append(Transition(self._scope_alarm(scope, now), K.FLOOD_END, now))
        return self.out

    def next_wakeup(self, now: datetime) -> datetime:
        """When on_tick has something to do at the latest (it is cheap; the service ticks at least this often)."""
        soon = now + timedelta(seconds=5)
        for a in self.alarms.values():
            for t in (a.shelved_until, a.hold_until if a.clear_pending else None):
                if t is not None and t < soon:
                    soon = max(now, t)
        return soon

    # --- operator commands (called through the service) ---------------------------------------
    def ack(self, alarm_id: int, by: str, now: datetime, note: str | None = None) -> list[Transition]:
        a = self._get(alarm_id)
        self.out = []
        if a.state not in (ACTIVE_UNACKED, CLEARED_UNACKED) and not (a.latching and a.state == ACTIVE_ACKED):
            raise InvalidTransition(alarm_id, a.state, "ack")
        a.acked_by = by
        if a.state == CLEARED_UNACKED or (a.latching and not a.condition):
            self._close(a)
        else:
            a.state = ACTIVE_ACKED
        self._emit(a, K.ACKED, now, by=by, detail={"note": note} if note else {})
        return self.out

    def resolve(self, alarm_id: int, by: str, now: datetime, cause: str, action: str) -> list[Transition]:
        a = self._get(alarm_id)
        self.out = []
        if a.acked_by is None:
            a.acked_by = by
        self._close(a)
        self._emit(a, K.RESOLVED, now, by=by, detail={"cause": cause, "action": action})
        return self.out

    def shelve(self, alarm_id: int, by: str, now: datetime, reason: str, until: datetime) -> list[Transition]:
        a = self._get(alarm_id)
        if until <= now:
            raise InvalidTransition(alarm_id, a.state, "shelve until a time in the past")
        self.out = []
        a.shelved_until = until
        self._emit(a, K.SHELVED, now, by=by, detail={"reason": reason, "until": until.isoformat()})
        return self.out

    def unshelve(self, alarm_id: int, by: str, now: datetime) -> list[Transition]:
        a = self._get(alarm_id)
        if a.shelved_until is None:
            raise InvalidTransition(alarm_id, a.state, "unshelve (not shelved)")
        self.out = []
        a.shelved_until = None
        self._emit(a, K.UNSHELVED, now, by=by)
        return self.out

    def set_enterprise_state(self, enterprise: str, state: EnterpriseState, now: datetime) -> list[Transition]:
        """Maintenance or an ordered stop suppresses process alarms by design (not the power rule)."""
        self.out = []
        self.ent_state[enterprise] = state
        suppress = state is not EnterpriseState.RUNNING
        for a in list(self.alarms.values()):
            if a.enterprise == enterprise and a.rule in PROCESS_RULES and a.suppressed != suppress:
                a.suppressed = suppress
                self._emit(a, K.SUPPRESSED if suppress else K.UNSUPPRESSED, now,
                           detail={"enterprise_state": state.value})
        return self.out

    def _get(self, alarm_id: int) -> Alarm:
        a = self.by_id.get(alarm_id)
        if a is None or not a.is_open:
            raise AlarmNotFound(alarm_id)
        return a

    # --- restoring after a restart ------------------------------------------------------------
    def restore(self, alarms: Iterable[Alarm]) -> None:
        """Open alarms from the database: they stay open and are not raised again."""
        for a in alarms:
            self.alarms[a.key] = a
            if a.alarm_id is not None:
                self.by_id[a.alarm_id] = a
            if a.sensor_id is not None and a.sensor_id < len(self.idx_of):
                i = int(self.idx_of[a.sensor_id])
                if i < 0 or not a.condition:
                    continue
                lvl = str(a.detail.get("level", ""))
                if a.rule == "high":
                    self.level[i] = 2 if lvl == "HH" else 1
                elif a.rule == "low":
                    self.level[i] = -2 if lvl == "LL" else -1
                elif a.rule in ("spark", "fault_signal"):
                    self.level[i] = 1
                elif a.rule == "stale":
                    self.stale[i] = True
                elif a.rule == "trend":
                    self.trend_on[i] = True
                elif a.rule == "fault" and a.detail.get("cause") == "flatline":
                    self.flat[i] = True
            elif a.rule == "comm_loss" and a.detail.get("cause") == "gateway_offline" and a.condition:
                self.ent_offline.add(a.enterprise)

    def bind(self, alarm: Alarm, alarm_id: int) -> None:
        alarm.alarm_id = alarm_id
        self.by_id[alarm_id] = alarm

    # --- raising and clearing -----------------------------------------------------------------
    def _raise(self, key: str, rule: str, s: SensorSpec | None, sev: Severity, when: datetime, value: float | None,
               limit: float | None, message: str, *, enterprise: str | None = None, latching: bool = False,
               detail: dict[str, Any] | None = None) -> None:
        ent = s.enterprise if s is not None else (enterprise or "")
        if rule in PROCESS_RULES and self.ent_state.get(ent, EnterpriseState.RUNNING) is not EnterpriseState.RUNNING:
            return  # suppressed by design: maintenance or an ordered stop
        a = self.alarms.get(key)
        if a is not None:
            a.value = value
            a.message = message
            if detail:
                a.detail.update(detail)
            if not a.condition:  # back in alarm before it was closed: re-alarm the same alarm
                a.condition = True
                a.clear_pending = False
                if a.state == CLEARED_UNACKED:
                    a.state = ACTIVE_UNACKED
                if sev.rank > a.severity.rank:
                    a.severity = sev
                self._note_raise(a, when)
                self._emit(a, K.RAISED, when, detail={"realarm": True})
            elif a.clear_pending:
                a.clear_pending = False
            elif sev.rank > a.severity.rank:
                a.severity = sev
                a.limit = limit
                self._emit(a, K.UPGRADED, when)
            return
        a = Alarm(key=key, rule=rule, enterprise=ent, severity=sev, raised_at=when,
                  sensor_id=s.id if s is not None else None, tag=s.tag if s is not None else None,
                  value=value, limit=limit, message=message, latching=latching,
                  detail=dict(detail or {}) | ({"latching": True} if latching else {}))
        self.alarms[key] = a
        self._note_raise(a, when)
        self._emit(a, K.RAISED, when)

    def _note_raise(self, a: Alarm, when: datetime) -> None:
        hist = self.raise_history[a.key]
        hist.append(when)
        while hist and when - hist[0] > self.cfg.chatter_window:
            hist.popleft()
        if len(hist) >= self.cfg.chatter_count and not a.chattering:
            a.chattering = True
            self._emit(a, K.CHATTERING, when, detail={"count": len(hist),
                                                     "window_s": self.cfg.chatter_window.total_seconds()})
        if a.chattering:
            a.hold_until = when + self.cfg.chatter_hold
        for scope in (a.enterprise, "*"):
            fh = self.flood_history[scope]
            fh.append(when)
            while fh and when - fh[0] > self.cfg.flood_window:
                fh.popleft()
            if len(fh) >= self.cfg.flood_count and scope not in self.flooding:
                self.flooding.add(scope)
                self.out.append(Transition(self._scope_alarm(scope, when), K.FLOOD_START, when,
                                           detail={"count": len(fh)}))
        a.flood = a.enterprise in self.flooding or "*" in self.flooding

    def _scope_alarm(self, scope: str, when: datetime) -> Alarm:
        """A stand-in naming the enterprise (or park, '*') for flood start/end events."""
        return Alarm(key=f"flood:{scope}", rule="flood", enterprise=scope, severity=Severity.BLUE, raised_at=when)

    def _clear(self, key: str, when: datetime, value: float | None, force: bool = False) -> None:
        a = self.alarms.get(key)
        if a is None or not a.condition:
            return
        if a.chattering and not force and a.hold_until is not None and when < a.hold_until:
            a.clear_pending = True  # damped: it clears at the tick after the hold if still normal
            return
        a.condition = False
        a.value = value if value is not None else a.value
        if a.latching and a.state == ACTIVE_UNACKED:
            return  # latched: stays in alarm until acknowledged (reset)
        if a.state in (ACTIVE_ACKED,) or (a.latching and a.acked_by):
            self._close(a)
        else:
            a.state = CLEARED_UNACKED
        self._emit(a, K.CLEARED, when)

    def _close(self, a: Alarm) -> None:
        a.state = CLOSED
        self.alarms.pop(a.key, None)

    def _emit(self, a: Alarm, kind: K, when: datetime, by: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
        self.out.append(Transition(a, kind, when, by, detail or {}))
