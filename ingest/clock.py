"""Each gateway's clock offset, measured from what it sends — pure, no IO, no clock of its own.

A gateway stamps its readings with its own clock; hazardwatch notes when each message arrives.
For a live reading, ``reading time − arrival time`` is the gateway's offset minus a small network
delay. A store-and-forward backlog (断点续传) arrives with old readings, which look exactly like a
slow clock if taken one at a time. So the estimate is the *largest* ``ts − arrival`` over the
last few minutes — the freshest readings decide — and a minute in which the gateway's stamps
advance much faster than real time (it is catching up on a backlog) may raise the estimate but
never lower it. Messages refused at the door as future-dated are observed too: a gateway ten
minutes fast has every reading refused, and its offset must still be reported.

Everything is bucketed by arrival minute and compared by bucket index, so no input (a reading
from 1970, a seq counter near 2^63) makes any work proportional to a timestamp.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

WINDOW_US = 60 * 1_000_000  # one bucket of arrival time
HORIZON = 5  # buckets the estimate looks back over
REPORT_EVERY_US = 60 * 1_000_000  # report an unchanged offset this often
MIN_CHANGE_S = 2.0  # report at once when the estimate moves by this much
CATCH_UP_RATIO = 2.0  # stamps advancing this much faster than arrivals: a backlog is being sent
CATCH_UP_SLACK_US = 5 * 1_000_000


@dataclass(slots=True)
class _Bucket:
    index: int
    max_off: int  # µs, the largest ts − arrival in the bucket
    ts_lo: int
    ts_hi: int
    rx_lo: int
    rx_hi: int

    @property
    def catching_up(self) -> bool:
        return (self.ts_hi - self.ts_lo) > CATCH_UP_RATIO * (self.rx_hi - self.rx_lo) + CATCH_UP_SLACK_US


@dataclass(slots=True)
class _Gateway:
    current: _Bucket
    history: collections.deque[_Bucket] = field(default_factory=lambda: collections.deque(maxlen=HORIZON))
    reported: float | None = None
    reported_at: int = 0


class ClockEstimator:
    """``observe`` each message's freshest reading time; ``due`` says which offsets to report now."""

    def __init__(self) -> None:
        self._gw: dict[str, _Gateway] = {}

    def observe(self, enterprise: str, ts_us: int, received_us: int) -> None:
        off = ts_us - received_us
        index = received_us // WINDOW_US
        g = self._gw.get(enterprise)
        if g is None:
            self._gw[enterprise] = _Gateway(_Bucket(index, off, ts_us, ts_us, received_us, received_us))
            return
        b = g.current
        if index != b.index:
            if index < b.index:
                return  # our own clock stepped back: ignore until it catches up
            g.history.append(b)
            g.current = _Bucket(index, off, ts_us, ts_us, received_us, received_us)
            return
        if off > b.max_off:
            b.max_off = off
        if ts_us < b.ts_lo:
            b.ts_lo = ts_us
        elif ts_us > b.ts_hi:
            b.ts_hi = ts_us
        if received_us > b.rx_hi:
            b.rx_hi = received_us

    def estimate(self, enterprise: str) -> float | None:
        """The gateway's clock minus ours in seconds, or None while nothing trustworthy was seen."""
        g = self._gw.get(enterprise)
        if g is None:
            return None
        first = g.current.index - HORIZON + 1
        best: int | None = None
        for b in (*g.history, g.current):
            if b.index < first:
                continue
            if b.catching_up and b.max_off < 0:
                continue  # old readings of a backlog: say nothing about the clock
            if best is None or b.max_off > best:
                best = b.max_off
        return None if best is None else best / 1e6

    def due(self, now_us: int) -> list[tuple[str, float]]:
        """(enterprise, offset seconds) for every gateway whose offset moved by ``MIN_CHANGE_S`` or was
        last reported ``REPORT_EVERY_US`` ago; marks them reported."""
        out = []
        for ent, g in self._gw.items():
            if g.current.index < now_us // WINDOW_US - HORIZON:
                continue  # silent for the whole horizon: nothing new to say
            est = self.estimate(ent)
            if est is None:
                continue
            if (g.reported is None or abs(est - g.reported) >= MIN_CHANGE_S
                    or now_us - g.reported_at >= REPORT_EVERY_US):
                g.reported = est
                g.reported_at = now_us
                out.append((ent, est))
        return out

    def __len__(self) -> int:
        return len(self._gw)
