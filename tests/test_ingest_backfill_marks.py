"""Which readings arrived as a backfill (断点续传), for the board to mark them: older than
``backfill_after`` on arrival once the gateway's measured clock offset is removed. Pure: the decoder
on explicit arrival times, no clock of its own.

Timeline: E2's gateway runs 10 minutes slow and reports every 5 s for a minute (its offset is
learned); E1 reports live, then flushes readings 40 to 31 minutes old."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from ingest.decode import Decoded, Decoder
from park.model import Park
from park.types import epoch_us
from tests.ingest_helpers import site

S = 1_000_000
T0 = epoch_us(datetime(2026, 11, 23, 0, 0, tzinfo=UTC))


def _batch(dec: Decoder, ent: str, points: list[dict[str, object]], rx: int, ts: int | None = None) -> Decoded:
    out = Decoded()
    doc: dict[str, object] = {"points": points} | ({"ts": ts // 1000} if ts is not None else {})
    dec.decode(out, f"hw/v1/{ent}/data", json.dumps(doc).encode(), rx)
    return out


def test_late_readings_are_marked_per_sensor_and_a_slow_clock_is_not_a_backfill() -> None:
    park = Park.from_site(site())
    dec = Decoder(park)
    lt = park.sensor("E2", "LT-1")
    a0, a1 = park.sensor("E1", "AT-000"), park.sensor("E1", "AT-001")
    assert lt is not None and a0 is not None and a1 is not None
    rx = T0
    for _ in range(13):  # a minute of E2's slow clock: the estimator learns −600 s
        out = _batch(dec, "E2", [{"tag": "LT-1", "value": 5.0}], rx, ts=rx - 600 * S)
        rx += 5 * S
    assert dec.clocks.estimate("E2") == -600.0
    assert dec.late_spans(out.batch()) == [], "ten minutes slow is a wrong clock, not a backfill"
    live = _batch(dec, "E1", [{"tag": "AT-000", "value": 3.0}], rx, ts=rx - 20_000)
    assert dec.late_spans(live.batch()) == []
    flush = [{"tag": t, "value": 3.0, "ts": (rx - (40 * 60 - k * 60) * S) // 1000}
             for k in range(10) for t in ("AT-001", "AT-000")]
    spans = dec.late_spans(_batch(dec, "E1", flush, rx).batch())
    first, last = rx - 40 * 60 * S, rx - 31 * 60 * S
    assert spans == [(a0.id, first, last, 10), (a1.id, first, last, 10)]
    # a minute late is not a backfill (backfill_after: 2 min)
    assert dec.late_spans(_batch(dec, "E1", [{"tag": "AT-000", "value": 3.0, "ts": (rx - 60 * S) // 1000}],
                                 rx).batch()) == []
