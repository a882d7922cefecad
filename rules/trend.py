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
from typing import Any

import numpy as np

from park.model import EffectiveLimits
from park.site import SensorKind
from park.types import from_epoch_us
from rules.base import F64, NEVER, Arrays, B, Context, Readings, arrays_nbytes, by_id
from rules.lifecycle import Alarm, Signal
from rules.threshold import LEVEL_NAMES, Threshold

K = 16  # samples kept per watched sensor
RECENT = 4  # the newest samples whose slope must still point at the limit
CLEAR_FACTOR = 1.5
_PAIRS = np.triu_indices(K, 1)


class Trend:
    name = "trend"

    def __init__(self, ctx: Context, threshold: Threshold) -> None:
        self.ctx = ctx
        self.th = threshold
        cfg = ctx.cfg
        specs = ctx.specs
        has_limits: dict[EffectiveLimits, bool] = {}  # most sensors share their limits

        def limited(lim: EffectiveLimits) -> bool:
            found = has_limits.get(lim)
            if found is None:
                found = has_limits[lim] = bool(lim.items())
            return found

        ok = [(not s.kind.is_boolean and s.kind is not SensorKind.POWER and s.trend_horizon is not None
               and limited(s.limits)) for s in specs]
        members = [i for i, good in enumerate(ok) if good]
        self.members = np.array(members, np.int32)
        self.slot = np.full(ctx.n, -1, np.int32)
        self.slot[self.members] = np.arange(len(members), dtype=np.int32)
        m = len(members)
        # window and horizon once per distinct setting; each watched sensor keeps an index
        table: dict[tuple[float, float], int] = {}
        tcid = [table.setdefault(((specs[i].trend_window or cfg.trend_window).total_seconds(),
                                  (specs[i].trend_horizon or cfg.trend_horizon).total_seconds()), len(table))
                for i in members]
        rows = np.array(list(table), np.float64).reshape(-1, 2)
        self.tcid = np.array(tcid, np.uint8 if len(table) < 256 else np.int32)
        self.c_window, self.c_horizon = rows[:, 0], rows[:, 1]
        self.c_every = (rows[:, 0] * 1e6 / K).astype(np.int64)  # µs per sampling step
        hh, h, lo, ll = threshold.limits(self.members)
        self.up = np.where(np.isfinite(h), h, hh).astype(np.float32)  # the limit projected to, NaN: none
        self.down = np.where(np.isfinite(lo), lo, ll).astype(np.float32)
        self.up_level = np.where(np.isfinite(h), 1, 2).astype(np.int8)
        self.down_level = np.where(np.isfinite(lo), -1, -2).astype(np.int8)
        # the ring: values (NaN: empty) and times packed in 16 bits — the sampling step's index
        # modulo 256 and the position inside the step in 1/256ths; every sample kept is within
        # 2 × K steps of the newest, so the step index is always recovered exactly
        self.v = np.full((m, K), np.nan, np.float32)
        self.tq = np.zeros((m, K), np.uint16)
        self.pos = np.zeros(m, np.uint8)
        self.last_bucket = np.full(m, np.iinfo(np.int64).min // 2, np.int64)
        self.on = np.zeros(m, bool)
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
        every = self.c_every[self.tcid[sl]]
        bucket = ts // every
        first = np.ones(len(pos), bool)
        first[1:] = sl[1:] != sl[:-1]
        prev = np.empty_like(bucket)
        prev[1:] = bucket[:-1]
        prev[first] = self.last_bucket[sl[first]]
        new = np.flatnonzero(bucket != prev)
        if not len(new):
            return
        sl, ts, v, bucket, every = sl[new], ts[new], v[new], bucket[new], every[new]
        frac = np.minimum(255, (ts - bucket * every) * 256 // every)
        tq = (((bucket & 0xFF) << 8) | frac).astype(np.uint16)
        n = len(sl)
        start = np.ones(n, bool)
        start[1:] = sl[1:] != sl[:-1]
        rank = np.arange(n) - np.maximum.accumulate(np.where(start, np.arange(n), 0))
        for k in range(int(rank.max()) + 1):
            sel = np.flatnonzero(rank == k)
            s_k, b_k = sl[sel], bucket[sel]
            gap = b_k - self.last_bucket[s_k]
            if (gap >= K).any():
                self.v[s_k[gap >= K]] = np.nan  # everything kept is outside the window now
            p = self.pos[s_k]
            self.v[s_k, p] = v[sel]
            self.tq[s_k, p] = tq[sel]
            self.pos[s_k] = (p + 1) % K
            self.last_bucket[s_k] = b_k
            self._project(s_k, ts[sel], b_k, every[sel], v[sel], obs)

    def _times(self, s_k: np.ndarray, b_k: np.ndarray, every: np.ndarray, now_us: np.ndarray,
               kept: B | None = None) -> tuple[F64, B]:
        """Sample times (seconds before now) of rows ``s_k`` whose newest step is ``b_k``; valid mask.
        ``kept``: ``isfinite(self.v[s_k])`` when the caller has it (one gather of the rows, not two)."""
        tq = self.tq[s_k].astype(np.int64)
        age = (b_k[:, None] - (tq >> 8)) & 0xFF
        t_us = (b_k[:, None] - age) * every[:, None] + ((tq & 0xFF) * every[:, None]) // 256
        ok = (np.isfinite(self.v[s_k]) if kept is None else kept) & (age < K)
        return (t_us - now_us[:, None]) / 1e6, ok

    def _project(self, s_k: np.ndarray, ts: np.ndarray, b_k: np.ndarray, every: np.ndarray, v: np.ndarray,
                 obs: list[tuple[int, int, float, float, float, float]]) -> None:
        vk = self.v[s_k]  # the rows' samples, gathered once (at 440,000 sensors each gather is cache misses)
        kept = np.isfinite(vk)
        T, valid = self._times(s_k, b_k, every, ts, kept)
        stale = kept & ~valid
        if stale.any():  # keeps every sample within K steps of the newest (exact 16-bit times)
            rows, cols = np.nonzero(stale)
            self.v[s_k[rows], cols] = np.nan
        n = valid.sum(axis=1)
        enough = n >= self.min_points
        if not enough.any() and not self.on[s_k].any():
            return
        T = np.where(valid, T, 0.0)
        V = np.where(valid, vk.astype(np.float64), 0.0)  # stale samples are not valid: vk's copy of them is unused
        w = valid.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mt = T.sum(axis=1) / n
            mv = V.sum(axis=1) / n
            dt = (T - mt[:, None]) * w
            slope = (dt * (V - mv[:, None])).sum(axis=1) / (dt * dt).sum(axis=1)
            eta = self._eta(s_k, v, slope)
        horizon = self.c_horizon[self.tcid[s_k]]
        near = (enough & (eta <= 2 * horizon)) | self.on[s_k]
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
        up, down = self.up[s_k], self.down[s_k]
        eta = np.full(len(s_k), np.inf)
        rise = (slope > 0) & np.isfinite(up)
        fall = (slope < 0) & np.isfinite(down)
        eta[rise] = (up[rise] - v[rise]) / slope[rise]
        eta[fall] = (v[fall] - down[fall]) / -slope[fall]
        eta[~np.isfinite(slope)] = np.inf
        return eta

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
            events: list[tuple[int, int, Any]] = [(c[0], 0, c) for c in changes]
            events += [(o[0], 1, o) for o in by_slot.get(sl, [])]
            events.sort(key=lambda e: (e[0], e[1]))
            for ts, what, item in events:
                if what == 0:
                    level = int(item[2])
                    if level != 0 and self.on[sl]:  # the limit alarm takes over from the early warning
                        self.on[sl] = False
                        out.append(self.ctx.signal(i, ts, "trend", "trend", False, "trend"))
                elif level == 0:
                    self._judge(sl, i, item, out)
        return out

    def _judge(self, sl: int, i: int, o: tuple[int, int, float, float, float, float], out: list[Signal]) -> None:
        ts, _s, v, slope, eta, recent = o
        horizon = float(self.c_horizon[self.tcid[sl]])
        up, down = float(self.up[sl]), float(self.down[sl])
        rising = slope > 0
        target = up if rising and np.isfinite(up) else down if slope < 0 and np.isfinite(down) else None
        toward = target is not None and np.isfinite(recent) and recent != 0 and (recent > 0) == rising
        if target is not None and toward and np.isfinite(eta) and 0 < eta <= horizon:
            self.on[sl] = True
            lvl = int(self.up_level[sl] if rising else self.down_level[sl])
            target = self.th.limit(i, lvl)  # exact (the ring keeps float32)
            eta_at = from_epoch_us(ts) + timedelta(seconds=eta)
            facts = self.ctx.facts(i) | {"eta_s": round(eta), "eta_at": eta_at.isoformat(),
                                         "slope_per_min": round(slope * 60, 6), "target_level": LEVEL_NAMES[lvl],
                                         "direction": "up" if rising else "down"}
            out.append(self.ctx.signal(i, ts, "trend", "trend", True, "trend", value=v, limit=target, facts=facts,
                                       severity=self.ctx.cfg.severity.trend))
        elif self.on[sl] and (target is None or not toward or (np.isinf(eta) or eta > CLEAR_FACTOR * horizon)):
            self.on[sl] = False
            out.append(self.ctx.signal(i, ts, "trend", "trend", False, "trend", value=v))

    # --- the rest of the shape -----------------------------------------------------------------
    def on_tick(self, now_us: int) -> list[Signal]:
        return []

    def next_wakeup(self, now_us: int) -> int | None:
        return None

    def snapshot(self) -> Arrays:
        have = np.flatnonzero(np.isfinite(self.v).any(axis=1))
        every = self.c_every[self.tcid[have]]
        b = self.last_bucket[have]
        T, ok = self._times(have, b, every, np.zeros(len(have), np.int64))
        t_us = np.where(ok, np.round(T * 1e6).astype(np.int64), NEVER)
        return {"sensor_id": self.ctx.ids[self.members[have]], "t_us": t_us, "v": self.v[have],
                "pos": self.pos[have], "last_bucket": b}

    def restore(self, snap: Arrays) -> None:
        idx, ok = by_id(self.ctx, snap["sensor_id"])
        sl = np.where(ok, self.slot[np.where(ok, idx, 0)], -1)
        keep = sl >= 0
        if not keep.any():
            return
        s, t_us, v = sl[keep], snap["t_us"][keep], snap["v"][keep]
        every = self.c_every[self.tcid[s]][:, None]
        real = (t_us != NEVER) & np.isfinite(v)
        bucket = np.where(real, t_us // every, 0)
        frac = np.where(real, np.minimum(255, (t_us - bucket * every) * 256 // every), 0)
        self.tq[s] = (((bucket & 0xFF) << 8) | frac).astype(np.uint16)
        self.v[s] = np.where(real, v, np.nan)
        self.pos[s] = snap["pos"][keep]
        self.last_bucket[s] = snap["last_bucket"][keep]

    def adopt(self, alarm: Alarm, i: int) -> None:
        if i >= 0 and alarm.rule == "trend" and alarm.condition and self.slot[i] >= 0:
            self.on[self.slot[i]] = True

    def nbytes(self) -> int:
        return arrays_nbytes(self.members, self.slot, self.tcid, self.up, self.down, self.up_level, self.down_level,
                             self.v, self.tq, self.pos, self.last_bucket, self.on)


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
