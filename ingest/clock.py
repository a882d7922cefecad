"""Each gateway's clock offset, measured from what it sends — pure, no IO, no clock of its own.

A gateway stamps its readings with its own clock; hazardwatch notes when each message arrives.
For a live reading, ``reading time − arrival time`` is the gateway's offset less a small network
delay. A store-and-forward backlog (断点续传) arrives with old readings, which taken one at a time
look exactly like a slow clock; while the gateway catches up, its stamps also advance much faster
than real time. So the estimate follows the freshest readings only, and only once it has held:

- each message gives one observation, its freshest reading time minus its arrival time;
- a *level* is an offset seen again within ``CONFIRM_S`` at least ``HOLD_US`` of arrival time
  later — live readings hold their level, a backlog being caught up climbs past every level and
  confirms none;
- an observation below the level is older data (a backlog interleaved with live readings) and
  says nothing about the clock; one above it starts a new level, which replaces the estimate once
  it holds; a level no observation has matched for ``EXPIRE_US`` lapses (a clock set back).

Messages refused at the door as future-dated are observed too: a gateway ten minutes fast has
every reading refused, and its offset must still be reported. Nothing here loops or allocates in
proportion to a timestamp, whatever a gateway sends (a reading "from 1970", year 9999).
"""

from __future__ import annotations

from dataclasses import dataclass

CONFIRM_S = 5.0  # observations this close are the same level (network and sampling jitter)
HOLD_US = 10 * 1_000_000  # a level seen again this much later is confirmed (a catch-up below 1.5× real time
# is not told apart from a clock drifting ahead)
EXPIRE_US = 5 * 60 * 1_000_000  # a level unmatched this long lapses
REPORT_EVERY_US = 60 * 1_000_000  # report an unchanged offset this often
MIN_CHANGE_S = 2.0  # report at once when the estimate moves by this much
_CONFIRM_US = int(CONFIRM_S * 1_000_000)


@dataclass(slots=True)
class _Gateway:
    level: int  # µs, the offset of the level being followed
    since: int  # arrival (µs) of its first observation
    last: int  # arrival of its latest matching observation
    top: int  # the highest offset matched at this level
    seen: int  # arrival of the latest observation of any kind
    estimate: int | None = None  # µs, the last confirmed level
    reported: float | None = None
    reported_at: int = 0


class ClockEstimator:
    """``observe`` each message's freshest reading time; ``due`` says which offsets to report now."""

    def __init__(self, hold_us: int = HOLD_US) -> None:
        self.hold_us = hold_us
        self._gw: dict[str, _Gateway] = {}

    def observe(self, enterprise: str, ts_us: int, received_us: int) -> None:
        off = ts_us - received_us
        g = self._gw.get(enterprise)
        if g is None:
            self._gw[enterprise] = _Gateway(off, received_us, received_us, off, received_us)
            return
        if received_us > g.seen:
            g.seen = received_us
        if off > g.level + _CONFIRM_US or received_us - g.last > EXPIRE_US:
            g.level = g.top = off  # fresher than the level, or the level lapsed: follow this one
            g.since = g.last = received_us
        elif off >= g.level - _CONFIRM_US:
            g.last = max(g.last, received_us)
            if off > g.top:
                g.top = off
            if received_us - g.since >= self.hold_us:
                g.estimate = g.top
        # below the level: older readings, nothing to say about the clock

    def estimate(self, enterprise: str) -> float | None:
        """The gateway's clock minus ours in seconds, or None while no level has held."""
        g = self._gw.get(enterprise)
        return None if g is None or g.estimate is None else g.estimate / 1e6

    def due(self, now_us: int) -> list[tuple[str, float]]:
        """(enterprise, offset seconds) for every gateway heard from lately whose offset moved by
        ``MIN_CHANGE_S`` or was last reported ``REPORT_EVERY_US`` ago; marks them reported."""
        out = []
        for ent, g in self._gw.items():
            if g.estimate is None or now_us - g.seen > EXPIRE_US:
                continue
            est = g.estimate / 1e6
            if (g.reported is None or abs(est - g.reported) >= MIN_CHANGE_S
                    or now_us - g.reported_at >= REPORT_EVERY_US):
                g.reported = est
                g.reported_at = now_us
                out.append((ent, est))
        return out

    def __len__(self) -> int:
        return len(self._gw)
