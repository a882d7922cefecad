"""Durations as operators write them in the site file: ``30s``, ``5m``, ``2h``, ``1d``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d|w)")


def parse_duration(text: str | int | float) -> timedelta:
    """Parse ``"1h30m"``, ``"45s"``, ``"500ms"``; a bare number is seconds.

    Raises ValueError with a sentence an operator can act on.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration; write it like 30s, 5m or 2h")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"duration {text} is negative")
        return timedelta(seconds=float(text))
    s = str(text).strip().lower()
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos and s[pos : m.start()].strip():
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        raise ValueError(f"{text!r} is not a duration; write it like 30s, 5m, 2h or 1h30m")
    return timedelta(seconds=total)


def format_duration(td: timedelta) -> str:
    """The shortest site-file spelling of ``td`` (``300s`` -> ``5m``)."""
    secs = td.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size and secs % size == 0:
            return f"{int(secs // size)}{unit}"
    return f"{secs:g}s"
