"""The rule engine: readings and ticks in, alarm transitions out. Pure: no IO, the clock passed in.

A thin composition of one operator per rule family (rules.base describes their shape) and the
alarm lifecycle (rules.lifecycle). A batch is prepared once — known, in-service sensors, fresh
readings only, sorted by (sensor, time) — and handed to every operator; each judges every reading
in time order per sensor, vectorised so that only readings that change something go through
Python. The conditions they report are then applied to the lifecycle in time order across the
whole batch (stable: ties keep operator order), so a backlog of hours for a whole park raises the
same alarms, votes included, as the same readings live.

Two clocks (docs/contract.md §8): process rules run on readings' own time; liveness on arrival time
(``ReadingBatch.received_us``); every transition also records ``noticed_at``, hazardwatch's time
when it was made, which escalation counts from. Alarms raised from late data carry
``backfilled: true`` and the delay.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from park.model import Park
from park.site import AlarmManagement, EnterpriseState
from park.types import BrokerState, GatewayClock, GatewayStatus, ReadingBatch, epoch_us, from_epoch_us
from rules.base import Arrays, Context, Operator, Readings
from rules.dust import Dust
from rules.fault import Fault
from rules.lifecycle import Alarm, Lifecycle, Signal, States, Transition
from rules.liveness import Liveness
from rules.power import Power
from rules.rate import Rate
from rules.threshold import Threshold
from rules.trend import Trend
from rules.vote import Vote

SNAPSHOT_VERSION = 1
TICK_MAX = timedelta(seconds=5)


class RuleEngine:
    """Judges readings of ``park``'s sensors; see module docstring."""

    def __init__(self, park: Park, config: AlarmManagement | None = None) -> None:
        self.park = park
        self.cfg = config or park.site.alarm_management
        self.ctx = Context(park, self.cfg)
        self.specs = park.sensors
        self.ent_state = States({e: ent.state for e, ent in park.enterprises.items()})
        self.life = Lifecycle(self.cfg, self.ent_state)
        self.liveness = Liveness(self.ctx)
        self.fault = Fault(self.ctx)
        self.threshold = Threshold(self.ctx)
        self.dust = Dust(self.ctx)
        self.rate = Rate(self.ctx)
        self.power = Power(self.ctx, self.ent_state)
        self.vote = Vote(self.ctx)
        self.trend = Trend(self.ctx, self.threshold)
        # order matters: fault marks readings never judged on limits; threshold lists the level
        # changes that vote and trend follow
        self.operators: list[Operator] = [self.liveness, self.fault, self.threshold, self.dust, self.rate,
                                          self.power, self.vote, self.trend]
        self.in_service = np.array([s.in_service for s in self.specs], bool)
        self.last_ts = np.full(self.ctx.n, np.iinfo(np.int64).min, np.int64)  # newest reading judged, µs
        self._scratch = np.zeros(self.ctx.n, np.int32)

    # --- views kept for callers -----------------------------------------------------------------
    @property
    def alarms(self) -> dict[str, Alarm]:
        """Open alarms by key."""
        return self.life.alarms

    @property
    def by_id(self) -> dict[int, Alarm]:
        """Open alarms by row id (closed ones leave)."""
        return self.life.by_id

    @property
    def gateway_clocks(self) -> dict[str, tuple[float, datetime]]:
        """The last measured clock offset (seconds, gateway minus hazardwatch; when) per enterprise."""
        return self.liveness.offsets()

    # --- readings -----------------------------------------------------------------------------
    def on_batch(self, batch: ReadingBatch, now: datetime | None = None) -> list[Transition]:
        """Judge a batch. ``now``: hazardwatch's time (default: the batch's arrival, else its newest reading)."""
        if len(batch) == 0:
            return []
        arrival = batch.received_us or (epoch_us(now) if now is not None else int(batch.ts_us.max()))
        noticed = now or from_epoch_us(arrival)
        self._begin(noticed)
        r = self._prepare(batch, arrival)
        if r is None:
            return self._end()
        signals: list[Signal] = []
        for op in self.operators:
            signals += op.on_readings(r)
        self._apply(signals, arrival)
        return self._end()

    def _prepare(self, batch: ReadingBatch, arrival: int) -> Readings | None:
        idx = self.ctx.dense(batch.sensor_id)
        keep = idx >= 0
        keep &= self.in_service[np.where(keep, idx, 0)]
        ts = batch.ts_us
        if not keep.all():
            pos = np.flatnonzero(keep)
            idx, ts, v, q = idx[pos], ts[pos], batch.value[pos], batch.quality[pos]
        else:
            v, q = batch.value, batch.quality
        if not len(idx):
            return None
        # one sort by (sensor, time): every operator's per-sensor work is a contiguous run. A live
        # batch usually holds each sensor once, and then any order will do: no sort
        m = len(idx)
        self._scratch[idx] = np.arange(m, dtype=np.int32)
        t0 = int(ts.min())
        span = int(ts.max()) - t0
        if (self._scratch[idx] == np.arange(m, dtype=np.int32)).all():
            order = None
        elif span < (1 << 40) and self.ctx.n < (1 << 22):
            order = np.argsort((idx.astype(np.int64) << 40) | (ts - t0), kind="stable")
        else:
            order = np.lexsort((ts, idx))
        if order is not None:
            idx, ts, v, q = idx[order], ts[order], v[order], q[order]
        # judged once, in order: nothing older than what a sensor was last judged on (redelivery)
        fresh = ts > self.last_ts[idx]
        fresh[1:] &= (idx[1:] != idx[:-1]) | (ts[1:] != ts[:-1])
        if not fresh.all():
            idx, ts, v, q = idx[fresh], ts[fresh], v[fresh], q[fresh]
        if not len(idx):
            return None
        first = np.ones(len(idx), bool)
        first[1:] = idx[1:] != idx[:-1]
        last = np.ones(len(idx), bool)
        last[:-1] = first[1:]
        self.last_ts[idx[last]] = ts[last]
        return Readings(idx, ts, v, q, first, arrival, np.ones(len(idx), bool))

    def _apply(self, signals: list[Signal], arrival: int) -> None:
        if not signals:
            return
        signals.sort(key=lambda s: (s.ts_us, s.order))
        for s in signals:
            if s.on:
                s.delay_s = self._delay(s, arrival)
            self.life.apply(s)

    def _delay(self, s: Signal, arrival: int) -> float:
        """How late the evidence arrived: arrival − event time, the gateway's measured clock offset removed."""
        clock = self.liveness.clocks.get(s.enterprise)
        return (arrival - s.ts_us) / 1e6 + (clock.offset_s if clock is not None else 0.0)

    def _begin(self, noticed: datetime) -> None:
        self.life.out = []
        self.life.noticed = noticed
        self.liveness.start(epoch_us(noticed))

    def _end(self) -> list[Transition]:
        out = self.life.out
        self.life.out = []
        return out

    # --- status, clocks and time --------------------------------------------------------------
    def on_status(self, status: GatewayStatus) -> list[Transition]:
        """A gateway's connectivity change, stamped with hazardwatch's time of receipt."""
        self._begin(status.ts)
        for s in self.liveness.on_status(status):
            self.life.apply(s)
        return self._end()

    def on_clock(self, clock: GatewayClock) -> list[Transition]:
        """A gateway's measured clock offset: kept, and an alarm beyond ``clock_skew_max``."""
        self._begin(clock.ts)
        for s in self.liveness.on_clock(clock):
            self.life.apply(s)
        return self._end()

    def on_broker(self, state: BrokerState) -> list[Transition]:
        """An MQTT broker's session up or down: unreachable for ``broker_unreachable_after`` (see
        on_tick) is an alarm to the park, cleared when the session is back."""
        self._begin(state.ts)
        for s in self.liveness.on_broker(state):
            self.life.apply(s)
        return self._end()

    def on_tick(self, now: datetime) -> list[Transition]:
        """Time-based rules on hazardwatch's clock: stale data, communication loss, shelving, chatter holds, floods."""
        self._begin(now)
        now_us = epoch_us(now)
        signals: list[Signal] = []
        for op in self.operators:
            signals += op.on_tick(now_us)
        signals.sort(key=lambda s: (s.ts_us, s.order))
        for s in signals:
            self.life.apply(s)
        self.life.tick(now)
        return self._end()

    def next_wakeup(self, now: datetime) -> datetime:
        """When on_tick has something to do at the latest (it is cheap; the service ticks at least this often)."""
        soon = now + TICK_MAX
        now_us = epoch_us(now)
        for op in self.operators:
            t = op.next_wakeup(now_us)
            if t is not None:
                soon = min(soon, max(now, from_epoch_us(t)))
        return self.life.next_wakeup(now, soon)

    # --- operator commands (called through the service) ---------------------------------------
    def ack(self, alarm_id: int, by: str, now: datetime, note: str | None = None) -> list[Transition]:
        self._begin(now)
        self.life.ack(alarm_id, by, now, note)
        return self._end()

    def resolve(self, alarm_id: int, by: str, now: datetime, cause: str, action: str) -> list[Transition]:
        self._begin(now)
        self.life.resolve(alarm_id, by, now, cause, action)
        return self._end()

    def shelve(self, alarm_id: int, by: str, now: datetime, reason: str, until: datetime) -> list[Transition]:
        self._begin(now)
        self.life.shelve(alarm_id, by, now, reason, until)
        return self._end()

    def unshelve(self, alarm_id: int, by: str, now: datetime) -> list[Transition]:
        self._begin(now)
        self.life.unshelve(alarm_id, by, now)
        return self._end()

    def set_enterprise_state(self, enterprise: str, state: EnterpriseState, now: datetime) -> list[Transition]:
        """Maintenance or an ordered stop suppresses process alarms by design, never life safety;
        a suppressed condition still present when it ends is raised then."""
        self._begin(now)
        self.life.set_enterprise_state(enterprise, state, now)
        return self._end()

    # --- restart ------------------------------------------------------------------------------
    def restore(self, alarms: Iterable[Alarm]) -> None:
        """Open alarms from the database: they stay open and are not raised again."""
        alarms = list(alarms)
        self.life.restore(alarms)
        for a in alarms:
            i = int(self.ctx.dense([a.sensor_id])[0]) if a.sensor_id is not None else -1
            for op in self.operators:
                op.adopt(a, i)
        self.vote.recount(self.threshold.level)

    def bind(self, alarm: Alarm, alarm_id: int) -> None:
        self.life.bind(alarm, alarm_id)

    def snapshot(self) -> dict[str, bytes]:
        """The learned state, one compact numpy blob per operator (and the lifecycle's histories)."""
        out = {}
        for op in self.operators:
            out[op.name] = _pack(op.snapshot())
        life = self.life.snapshot()
        out["lifecycle"] = _pack({k: np.array(v, dtype=str if k.endswith(("keys", "scopes")) or k == "flooding"
                                              else np.int64) for k, v in life.items()})
        out["engine"] = _pack({"sensor_id": self.ctx.ids, "last_ts": self.last_ts})
        return out

    def restore_snapshot(self, blobs: dict[str, bytes]) -> list[str]:
        """Resume learned state; returns the parts restored (an unreadable part is skipped)."""
        done = []
        ops: dict[str, Any] = {op.name: op for op in self.operators}
        for name, blob in blobs.items():
            arrays = _unpack(blob)
            if arrays is None:
                continue
            if name in ops:
                ops[name].restore(arrays)
            elif name == "lifecycle":
                self.life.restore_snapshot(arrays)
            elif name == "engine":
                idx = self.ctx.dense(arrays["sensor_id"])
                ok = idx >= 0
                self.last_ts[idx[ok]] = np.maximum(self.last_ts[idx[ok]], arrays["last_ts"][ok])
            else:
                continue
            done.append(name)
        return done

    def nbytes(self) -> int:
        """Memory of the per-sensor state (numpy arrays), for the benchmark."""
        return sum(op.nbytes() for op in self.operators) + int(self.ctx.idx_of.nbytes + self.ctx.ent_idx.nbytes
                                                                + self.in_service.nbytes + self.last_ts.nbytes
                                                                + self._scratch.nbytes)


def _pack(arrays: Arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, __version__=np.array(SNAPSHOT_VERSION), **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _unpack(blob: bytes) -> Arrays | None:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            if int(z["__version__"]) != SNAPSHOT_VERSION:
                return None
            return {k: z[k] for k in z.files if k != "__version__"}
    except Exception:  # a part written by another version, or damaged: start that part afresh
        return None
