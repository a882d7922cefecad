"""Liveness, on hazardwatch's own clock (docs/contract.md §8): a sensor is stale when nothing of it has
*arrived* for ``stale_multiple`` × its interval while its enterprise still sends; an enterprise has
lost communication when its gateway's Last Will says so, or when nothing at all has arrived from
it for ``comm_loss_after``. A gateway whose clock is wrong is therefore never "offline"; its
measured offset is kept (for the API and board) and an offset beyond ``clock_skew_max`` is itself
an alarm.

MQTT brokers (ingest tells every session change, :class:`park.types.BrokerState`): a broker down
for ``broker_unreachable_after`` on hazardwatch's clock raises an alarm to the park
(``PARK_SCOPE``), cleared when its session is back.

Silence counts from the moment the rule stage starts at the earliest: a sensor that never reports
after start is stale after its bound, an enterprise that never reports has lost communication after
``comm_loss_after``, and the backlog a restart releases is not mistaken for silence. Last-seen
times are part of the snapshot, for the record.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from park.types import PARK_SCOPE, BrokerState, GatewayClock, GatewayStatus, epoch_us
from rules.base import NEVER, Arrays, Context, Readings, arrays_nbytes, by_id
from rules.lifecycle import Alarm, Signal


class Liveness:
    name = "liveness"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        cfg = ctx.cfg
        specs = ctx.specs
        self.in_service = np.array([s.in_service for s in specs], bool)
        self.stale_after_s = np.array([s.interval.total_seconds() * cfg.stale_multiple for s in specs], np.float32)
        self.last_seen = np.full(ctx.n, NEVER, np.int64)  # arrival time, µs
        self.stale = np.zeros(ctx.n, bool)
        ne = len(ctx.ent_codes)
        self.ent_last = np.full(ne, NEVER, np.int64)
        self.ent_offline = np.zeros(ne, bool)  # the gateway's Last Will said so
        self.ent_silent = np.zeros(ne, bool)  # comm loss from silence is raised
        self.ent_pos = {e: k for k, e in enumerate(ctx.ent_codes)}
        self.comm_after_us = int(cfg.comm_loss_after.total_seconds() * 1e6)
        self.started_us: int | None = None
        self.clocks: dict[str, GatewayClock] = {}  # the last measured offset per enterprise
        self.clock_bad: set[str] = set()
        self.broker_down: dict[str, int] = {}  # broker → since when it is unreachable (hazardwatch's µs)
        self.broker_bad: set[str] = set()  # brokers whose alarm is raised
        self.broker_after_us = int(cfg.broker_unreachable_after.total_seconds() * 1e6)

    def start(self, now_us: int) -> None:
        """Silence counts from here at the earliest (first call with hazardwatch's time)."""
        if self.started_us is not None:
            return
        self.started_us = now_us
        np.maximum(self.last_seen, now_us, out=self.last_seen)
        np.maximum(self.ent_last, now_us, out=self.ent_last)

    # --- readings: arrival is evidence of life ------------------------------------------------
    def on_readings(self, r: Readings) -> list[Signal]:
        if not len(r):
            return []
        at = r.arrival_us
        self.last_seen[r.idx] = at
        ents = self.ctx.ent_idx[r.idx[r.first]]
        self.ent_last[ents] = at
        out: list[Signal] = []
        back = r.first & self.stale[r.idx]
        for i in map(int, r.idx[back]):
            self.stale[i] = False
            out.append(self.ctx.signal(i, at, "stale", "stale", False, "liveness"))
        for e in map(int, np.unique(ents[self.ent_silent[ents]])):
            self.ent_silent[e] = False
            out.append(self._ent_signal(e, at, False))
        return out

    def _ent_signal(self, e: int, ts: int, on: bool, **facts: object) -> Signal:
        code = self.ctx.ent_codes[e]
        f = {"name": self.ctx.park.enterprises[code].name, "enterprise_name": self.ctx.park.enterprises[code].name}
        return Signal(ts, f"e:{code}:comm_loss", "comm_loss", on, code, severity=self.ctx.cfg.severity.comm_loss,
                      facts=f | facts, order=0)

    def on_status(self, status: GatewayStatus) -> list[Signal]:
        e = self.ent_pos.get(status.enterprise)
        if e is None:
            return []
        ts = epoch_us(status.ts)
        if not status.online:
            was = self.ent_offline[e]
            self.ent_offline[e] = True
            if was:
                return []
            self.ent_silent[e] = False  # one alarm says it; the Last Will is the better cause
            return [self._ent_signal(e, ts, True, cause="gateway_offline")]
        self.ent_last[e] = max(int(self.ent_last[e]), ts)  # the gateway just spoke
        if self.ent_offline[e]:
            self.ent_offline[e] = False
            return [self._ent_signal(e, ts, False)]
        return []

    def on_clock(self, clock: GatewayClock) -> list[Signal]:
        e = self.ent_pos.get(clock.enterprise)
        if e is None:
            return []
        self.clocks[clock.enterprise] = clock
        bound = self.ctx.cfg.clock_skew_max.total_seconds()
        off = abs(clock.offset_s)
        code = clock.enterprise
        key = f"e:{code}:clock"
        if off > bound and code not in self.clock_bad:
            self.clock_bad.add(code)
            name = self.ctx.park.enterprises[code].name
            facts = {"name": name, "enterprise_name": name, "offset_s": round(clock.offset_s, 1),
                     "bound_s": bound}
            return [Signal(epoch_us(clock.ts), key, "clock", True, code, severity=self.ctx.cfg.severity.clock,
                           value=round(clock.offset_s, 1), limit=bound, facts=facts, order=0)]
        if off <= 0.9 * bound and code in self.clock_bad:  # a little hysteresis against a jittery estimate
            self.clock_bad.discard(code)
            return [Signal(epoch_us(clock.ts), key, "clock", False, code, value=round(clock.offset_s, 1), order=0)]
        return []

    def on_broker(self, state: BrokerState) -> list[Signal]:
        """A broker's session up or down; the alarm itself waits for on_tick (broker_unreachable_after)."""
        name = state.broker
        if not state.connected:
            self.broker_down.setdefault(name, epoch_us(state.ts))
            return []
        self.broker_down.pop(name, None)
        if name in self.broker_bad:
            self.broker_bad.discard(name)
            return [Signal(epoch_us(state.ts), _broker_key(name), "broker", False, PARK_SCOPE, order=0)]
        return []

    def _broker_signals(self, now_us: int) -> list[Signal]:
        out = []
        for name, since in self.broker_down.items():
            if name not in self.broker_bad and now_us - since >= self.broker_after_us:
                self.broker_bad.add(name)
                facts = {"broker": name, "down_s": round((now_us - since) / 1e6),
                         "after_s": self.broker_after_us / 1e6, "name": self.ctx.park.site.site.name}
                out.append(Signal(now_us, _broker_key(name), "broker", True, PARK_SCOPE,
                                  severity=self.ctx.cfg.severity.broker, facts=facts, order=0))
        return out

    # --- time ---------------------------------------------------------------------------------
    def on_tick(self, now_us: int) -> list[Signal]:
        self.start(now_us)
        out: list[Signal] = self._broker_signals(now_us) if self.broker_down else []
        ent_quiet = now_us - self.ent_last
        for e in np.flatnonzero((ent_quiet > self.comm_after_us) & ~self.ent_silent & ~self.ent_offline):
            self.ent_silent[e] = True
            out.append(self._ent_signal(int(e), now_us, True, cause="no_data",
                                        silent_s=round(int(ent_quiet[e]) / 1e6)))
        silent = now_us - self.last_seen
        bound = self.stale_after_s.astype(np.int64) * 1_000_000
        ent = self.ctx.ent_idx
        newly = (silent > bound) & ~self.stale & self.in_service
        if newly.any():
            # the enterprise still sends (else it is communication loss, said once for all its sensors)
            newly &= (ent_quiet[ent] <= bound) & ~self.ent_offline[ent] & ~self.ent_silent[ent]
            for i in map(int, np.flatnonzero(newly)):
                self.stale[i] = True
                s = self.ctx.specs[i]
                facts = self.ctx.facts(i) | {"silent_s": round(int(silent[i]) / 1e6),
                                             "interval_s": s.interval.total_seconds()}
                out.append(self.ctx.signal(i, now_us, "stale", "stale", True, "liveness",
                                           severity=self.ctx.cfg.severity.stale, facts=facts))
        return out

    def next_wakeup(self, now_us: int) -> int | None:
        # the service ticks every few seconds; stale bounds are minutes; a broker's bound may be seconds
        due = [since + self.broker_after_us for name, since in self.broker_down.items() if name not in self.broker_bad]
        return min(due) if due else None

    def offsets(self) -> dict[str, tuple[float, datetime]]:
        """The last measured clock offset (seconds, gateway minus hazardwatch) per enterprise."""
        return {e: (c.offset_s, c.ts) for e, c in self.clocks.items()}

    # --- state --------------------------------------------------------------------------------
    def snapshot(self) -> Arrays:
        seen = np.flatnonzero(self.last_seen != NEVER)
        return {"sensor_id": self.ctx.ids[seen], "last_seen": self.last_seen[seen],
                "ent": np.array(self.ctx.ent_codes, dtype=str), "ent_last": self.ent_last}

    def restore(self, snap: Arrays) -> None:
        idx, ok = by_id(self.ctx, snap["sensor_id"])
        self.last_seen[idx[ok]] = np.maximum(self.last_seen[idx[ok]], snap["last_seen"][ok])
        for code, last in zip(snap["ent"], snap["ent_last"], strict=True):
            e = self.ent_pos.get(str(code))
            if e is not None:
                self.ent_last[e] = max(int(self.ent_last[e]), int(last))
        if self.started_us is not None:
            np.maximum(self.last_seen, self.started_us, out=self.last_seen)
            np.maximum(self.ent_last, self.started_us, out=self.ent_last)

    def adopt(self, alarm: Alarm, i: int) -> None:
        if not alarm.condition:
            return
        if alarm.rule == "stale" and i >= 0:
            self.stale[i] = True
        elif alarm.rule == "comm_loss" and alarm.enterprise in self.ent_pos:
            e = self.ent_pos[alarm.enterprise]
            if alarm.detail.get("cause") == "gateway_offline":
                self.ent_offline[e] = True
            else:
                self.ent_silent[e] = True
        elif alarm.rule == "clock":
            self.clock_bad.add(alarm.enterprise)
        elif alarm.rule == "broker" and alarm.detail.get("broker"):
            # still down as far as we know: the new ingest stage's first session clears it
            self.broker_bad.add(str(alarm.detail["broker"]))

    def nbytes(self) -> int:
        return arrays_nbytes(self.in_service, self.stale_after_s, self.last_seen, self.stale, self.ent_last,
                             self.ent_offline, self.ent_silent)


def _broker_key(name: str) -> str:
    return f"broker:{name}"
