"""Duty-room shifts (交接班): which shift a moment falls in, from the site's shift start times."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo


def current_shift(now: datetime, starts: list[str], tz: str = "Asia/Shanghai") -> tuple[datetime, datetime]:
    """The [start, end) of the shift containing ``now`` (UTC in, UTC out); ``starts`` are local "HH:MM"."""
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    times = sorted(time.fromisoformat(s) for s in starts)
    candidates = []
    for day in (-1, 0, 1):
        d = (local + timedelta(days=day)).date()
        candidates += [datetime.combine(d, t, zone) for t in times]
    candidates.sort()
    start = max(c for c in candidates if c <= local)
    end = min(c for c in candidates if c > local)
    return start.astimezone(now.tzinfo), end.astimezone(now.tzinfo)
