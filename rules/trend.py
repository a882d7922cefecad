"""Trend early warning: a robust slope over a recent window projects the time until the next limit.

Each watched sensor keeps a ring of K samples spread over its window: the first good reading in
each window/K step of *reading time* becomes a sample, so which readings are sampled depends only
on their times — a ramp delivered as one burst is sampled, projected and warned exactly as the
same ramp delivered live. A batch with many samples per sensor (a backlog) is handled in rounds,
each round one sample per sensor, vectorised across sensors.

At each new sample, a least-squares slope screens the projection cheaply; the few sensors near
their horizon (or already warned) are confirmed with the Theil–Sen slope (median of pairwise
slopes), which a spike or two cannot move. A warning is raised while the sensor is below its
limits, the robust slope and the slope of the newest samples both point at the limit, and the
projected time is within the horizon; it clears when the limit alarm takes over, when the newest
samples turn away, or when the projection is beyond 1.5 × the horizon.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from park.site import SensorKind
from park.types import from_epoch_us
from rules.base import NEVER, Arrays, Context, Readings, arrays_nbytes, by_id
from rules.lifecycle import Alarm, Signal
from rules.threshold import LEVEL_NAMES, Threshold

K = 16  # samples kept per watched sensor
RECENT = 4  # the newest samples whose slope must still point at the limit
CLEAR_FACTOR = 1.5
EMPTY = np.iinfo(np.int32).min
TICK_US = 100_000  # sample times are kept in deciseconds from a base, as int32
_PAIRS = np.triu_indices(K, 1)
_MAX_DS = 2**31 - 2


class Trend:
    name = "trend"

    def __init__(self, ctx: Context, threshold: Threshold) -> None:
        self.ctx = ctx
        self.th = threshold
        cfg = ctx.cfg
        specs = ctx.specs
        ok = [(not s.kind.is_boolean and s.kind is not SensorKind.POWER and s.trend_horizon is not None
               and bool(s.limits.items())) for s in specs]
        members = [i for i, good in enumerate(ok) if good]
        self.members = np.array(members, np.int32)
        self.slot = np.full(ctx.n, -1, np.int32)
        self.slot[self.members] = np.arange(len(members), dtype=np.int32)
        m = len(members)
        window = np.array([(specs[i].trend_window or cfg.trend_window).total_seconds() for i in members], np.float32)
        self.window = window
        self.horizon = np.array([(specs[i].trend_horizon or cfg.trend_horizon).total_seconds() for i in members],
                                np.float32)
        self.every_us = (window.astype(np.float64) * 1e6 / K).astype(np.int64)
        self.t = np.full((m, K), EMPTY, np.int32)
        self.v = np.full((m, K), np.nan, np.float32)
        self.pos = np.zeros(m, np.uint8)
        self.last_bucket = np.full(m, -1, np.int64)
        self.on = np.zeros(m, bool)
        self.base_us: int | None = None
        self.min_points = cfg.trend_min_points

    # --- readings -----------------------------------------------------------------------------
    def on_readings(self, r: Readings) -> list[Signal]:
        obs: list[tuple[int, int, float, float, float, float]] = []  # (ts, slot, value, slope/s, eta s, recent)
        if len(self.members) and len(r):
            self._sample(r, obs)
        return self._decide(r, obs)

    def _sample(self, r: Readings, obs: list[tuple[int, int, float, float, float, float]]) -> None:
        slot = self.slot[r.idx]
        pos = np.flatnonzero((slot >= 0) & r.good)
        if not len(pos):
            return
        sl, ts, v = slot[pos], r.ts[pos], r.v[pos]
        bucket = ts // self.every_us[sl]
        first = np.ones(len(pos), bool)
        first[1:] = sl[1:] != sl[:-1]
        prev = np.empty_like(bucket)
        prev[1:] = bucket[:-1]
        prev[first] = self.last_bucket[sl[first]]
        new = np.flatnonzero(bucket != prev)
        if not len(new):
            return
        sl, ts, v, bucket = sl[new], ts[new], v[new], bucket[new]
        if self.base_us is None:
            self.base_us = int(ts.min()) - 8 * 86_400_000_000
        if int(ts.max()) - self.base_us >= _MAX_DS * TICK_US:
            self._rebase(int(ts.max()))
        n = len(sl)
        start = np.ones(n, bool)
        start[1:] = sl[1:] != sl[:-1]
        group_start = np.maximum.accumulate(np.where(start, np.arange(n), 0))
        rank = np.arange(n) - group_start
        end = np.ones(n, bool)
        end[:-1] = start[1:]
        self.last_bucket[sl[end]] = bucket[end]
        t_ds = ((ts - self.base_us) // TICK_US).astype(np.int32)
        for k in range(int(rank.max()) + 1):
            sel = np.flatnonzero(rank == k)
            s_k = sl[sel]
            p = self.pos[s_k]
            self.t[s_k, p] = t_ds[sel]
            self.v[s_k, p] = v[sel]
            self.pos[s_k] = (p + 1) % K
            self._project(s_k, ts[sel], t_ds[sel], v[sel], obs)

    def _project(self, s_k: np.ndarray, ts: np.ndarray, t_ds: np.ndarray, v: np.ndarray,
                 obs: list[tuple[int, int, float, float, float, float]]) -> None:
        tw = self.t[s_k]
        valid = (tw != EMPTY) & (tw >= (t_ds - (self.window[s_k] * 10).astype(np.int32))[:, None])
        n = valid.sum(axis=1)
        enough = n >= self.min_points
        if not enough.any() and not self.on[s_k].any():
            return
        T = np.where(valid, (tw - t_ds[:, None]) / 10.0, 0.0)  # seconds before now
        V = np.where(valid, self.v[s_k].astype(np.float64), 0.0)
        w = valid.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mt = T.sum(axis=1) / n
            mv = V.sum(axis=1) / n
            dt = (T - mt[:, None]) * w
            slope = (dt * (V - mv[:, None])).sum(axis=1) / (dt * dt).sum(axis=1)
            eta = self._eta(s_k, v, slope)
        near = (enough & (eta <= 2 * self.horizon[s_k])) | self.on[s_k]
        rows = np.flatnonzero(near)
        if not len(rows):
            return
        robust = _theil_sen(T[rows], V[rows], valid[rows])
        recent = self._recent(s_k[rows], T[rows], V[rows], valid[rows])
        with np.errstate(invalid="ignore", divide="ignore"):
            eta_r = self._eta(s_k[rows], v[rows], robust)
        for q, row in enumerate(rows):
            e = float(eta_r[q]) if enough[row] else np.nan
            obs.append((int(ts[row]), int(s_k[row]), float(v[row]), float(robust[q]), e, float(recent[q])))

    def _eta(self, s_k: np.ndarray, v: np.ndarray, slope: np.ndarray) -> np.ndarray:
        i = self.members[s_k]
        up, down = self._up(i), self._down(i)
        eta = np.full(len(s_k), np.inf)
        rise = (slope > 0) & np.isfinite(up)
        fall = (slope < 0) & np.isfinite(down)
        eta[rise] = (up[rise] - v[rise]) / slope[rise]
        eta[fall] = (v[fall] - down[fall]) / -slope[fall]
        eta[~np.isfinite(slope)] = np.inf
        return eta

    def _up(self, i: np.ndarray) -> np.ndarray:
        h = self.th.h[i]
        return np.where(np.isfinite(h), h, self.th.hh[i])

    def _down(self, i: np.ndarray) -> np.ndarray:
        lo = self.th.lo[i]
        return np.where(np.isfinite(lo), lo, self.th.ll[i])

    def _recent(self, s_k: np.ndarray, T: np.ndarray, V: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Least-squares slope of the newest RECENT samples (ring positions before ``pos``)."""
        cols = (self.pos[s_k].astype(np.int64)[:, None] - 1 - np.arange(RECENT)[None, :]) % K
        rows = np.arange(len(s_k))[:, None]
        t, val, ok = T[rows, cols], V[rows, cols], valid[rows, cols]
        w = ok.astype(np.float64)
        n = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mt = (t * w).sum(axis=1) / n
            mv = (val * w).sum(axis=1) / n
            dt = (t - mt[:, None]) * w
            out = (dt * (val - mv[:, None])).sum(axis=1) / (dt * dt).sum(axis=1)
        return np.where(n >= 2, out, np.nan)

    def _decide(self, r: Readings, obs: list[tuple[int, int, float, float, float, float]]) -> list[Signal]:
        """Raise or clear in time order, sensor by sensor, against the threshold level at that time."""
        out: list[Signal] = []
        lvl_events: dict[int, list[tuple[int, int, int]]] = {}
        for ts, i, old, new in r.level_changes:
            sl = int(self.slot[i])
            if sl >= 0:
                lvl_events.setdefault(sl, []).append((ts, old, new))
        by_slot: dict[int, list[tuple[int, int, float, float, float, float]]] = {}
        for o in obs:
            by_slot.setdefault(o[1], []).append(o)
        for sl in set(by_slot) | {s for s in lvl_events if self.on[s]}:
            changes = lvl_events.get(sl, [])
            i = int(self.members[sl])
            level = changes[0][1] if changes else int(self.th.level[i])
            events = sorted([(c[0], 0, c) for c in changes] + [(o[0], 1, o) for o in by_slot.get(sl, [])],
                            key=lambda e: (e[0], e[1]))
            for ts, what, item in events:
                if what == 0:
                    level = int(item[2])
                    if level != 0 and self.on[sl]:  # the limit alarm takes over from the early warning
                        self.on[sl] = False
                        out.append(self.ctx.signal(i, ts, "trend", "trend", False, "trend"))
                elif level == 0:
                    self._judge(sl, i, item, out)  # type: ignore[arg-type]
        return out

    def _judge(self, sl: int, i: int, o: tuple[int, int, float, float, float, float], out: list[Signal]) -> None:
        ts, _s, v, slope, eta, recent = o
        horizon = float(self.horizon[sl])
        up = float(self._up(np.array([i]))[0])
        down = float(self._down(np.array([i]))[0])
        target = up if slope > 0 and np.isfinite(up) else down if slope < 0 and np.isfinite(down) else None
        toward = target is not None and np.isfinite(recent) and (recent > 0) == (slope > 0) and recent != 0
        if target is not None and toward and np.isfinite(eta) and 0 < eta <= horizon:
            self.on[sl] = True
            lvl = 1 if target == self.th.h[i] else 2 if target == self.th.hh[i] else -1 if target == self.th.lo[i] \
                else -2
            eta_at = from_epoch_us(ts) + timedelta(seconds=eta)
            facts = self.ctx.facts(i) | {"eta_s": round(eta), "eta_at": eta_at.isoformat(),
                                         "slope_per_min": round(slope * 60, 6), "target_level": LEVEL_NAMES[lvl],
                                         "direction": "up" if slope > 0 else "down"}
            out.append(self.ctx.signal(i, ts, "trend", "trend", True, "trend", value=v, limit=target, facts=facts,
                                       severity=self.ctx.cfg.severity.trend))
        elif self.on[sl] and (target is None or not toward or (not np.isfinite(eta) and not np.isnan(eta))
                              or eta > CLEAR_FACTOR * horizon):
            self.on[sl] = False
            out.append(self.ctx.signal(i, ts, "trend", "trend", False, "trend", value=v))

    def _rebase(self, newest_us: int) -> None:
        assert self.base_us is not None
        new_base = newest_us - 8 * 86_400_000_000
        shift = (new_base - self.base_us) // TICK_US
        keep = (self.t != EMPTY) & (self.t.astype(np.int64) - shift > EMPTY)
        self.t = np.where(keep, self.t.astype(np.int64) - shift, EMPTY).astype(np.int32)
        self.base_us += shift * TICK_US

    # --- the rest of the shape -----------------------------------------------------------------
    def on_tick(self, now_us: int) -> list[Signal]:
        return []

    def next_wakeup(self, now_us: int) -> int | None:
        return None

    def snapshot(self) -> Arrays:
        have = np.flatnonzero((self.t != EMPTY).any(axis=1))
        t = self.t[have].astype(np.int64)
        base = self.base_us or 0
        t_us = np.where(t != EMPTY, t * TICK_US + base, NEVER)
        return {"sensor_id": self.ctx.ids[self.members[have]], "t_us": t_us, "v": self.v[have],
                "pos": self.pos[have], "last_bucket": self.last_bucket[have]}

    def restore(self, snap: Arrays) -> None:
        idx, ok = by_id(self.ctx, snap["sensor_id"])
        sl = np.where(ok, self.slot[np.where(ok, idx, 0)], -1)
        keep = sl >= 0
        if not keep.any():
            return
        t_us = snap["t_us"][keep]
        real = t_us != NEVER
        if self.base_us is None:
            self.base_us = int(t_us[real].min()) - 8 * 86_400_000_000 if real.any() else None
        if self.base_us is None:
            return
        rel = np.where(real, (t_us - self.base_us) // TICK_US, EMPTY)
        self.t[sl[keep]] = np.clip(rel, EMPTY, _MAX_DS).astype(np.int32)
        self.v[sl[keep]] = snap["v"][keep]
        self.pos[sl[keep]] = snap["pos"][keep]
        self.last_bucket[sl[keep]] = snap["last_bucket"][keep]

    def adopt(self, alarm: Alarm, i: int) -> None:
        if i >= 0 and alarm.rule == "trend" and alarm.condition and self.slot[i] >= 0:
            self.on[self.slot[i]] = True

    def nbytes(self) -> int:
        return arrays_nbytes(self.members, self.slot, self.window, self.horizon, self.every_us, self.t, self.v,
                             self.pos, self.last_bucket, self.on)


def _theil_sen(T: np.ndarray, V: np.ndarray, valid: np.ndarray) -> np.ndarray:
    i, j = _PAIRS
    ok = valid[:, i] & valid[:, j]
    with np.errstate(invalid="ignore", divide="ignore"):
        dt = T[:, j] - T[:, i]
        slopes = np.where(ok & (dt != 0), (V[:, j] - V[:, i]) / dt, np.nan)
    out = np.full(len(T), np.nan)
    have = np.isfinite(slopes).sum(axis=1) >= 3
    if have.any():
        out[have] = np.nanmedian(slopes[have], axis=1)
    return out
