"""The decoder under a fuzzer (issue 11, item 7): hypothesis with a large example budget, seeded from
the corpus kept in ``tests/fuzz/decoder_corpus.jsonl`` and mutating it byte by byte, plus generated
gateway batches mixing valid and hostile points. Bounded time: ``HW_FUZZ_EXAMPLES`` examples per
test (default 10,000 and 2,500: about a minute together; CI may raise it), hypothesis' own shrinking on failure.

What must hold for every input: no exception and no "decoder error"; every message accounted for
(readings, rejects or a status); every accepted reading is a registered sensor with a finite value,
a quality of 0–2 and a time inside [receive − backfill, receive + 5 min]; every reject says why and
keeps at most 1 KiB; and in a batch every valid point is kept, whatever its neighbours are.
"""

from __future__ import annotations

import base64
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.decode import FUTURE_LIMIT_US, KEEP_BYTES, Decoded, Decoder
from park.model import Park
from park.types import epoch_us
from tests.ingest_helpers import TAGS, site

PARK = Park.from_site(site())
SIDS = {s.id for s in PARK.sensors}
NOW_US = epoch_us(datetime(2026, 11, 23, tzinfo=UTC))
NOW_MS = NOW_US // 1000
CORPUS = [(e["topic"], base64.b64decode(e["payload"]))
          for e in map(json.loads, (Path(__file__).parent / "fuzz" / "decoder_corpus.jsonl").read_text().splitlines())]
BUDGET = int(os.environ.get("HW_FUZZ_EXAMPLES", "10000"))
FUZZ = settings(max_examples=BUDGET, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False)


def check(dec: Decoder, topic: str, payload: bytes) -> Decoded:
    out = Decoded()
    dec.decode(out, topic, payload, NOW_US)
    assert len(out) + len(out.rejects) + len(out.statuses) >= 1 or _empty_batch(payload)
    for sid, ts, v, q in zip(out.sensor_id, out.ts_us, out.value, out.quality, strict=True):
        assert sid in SIDS
        assert math.isfinite(v) and q in (0, 1, 2)
        assert NOW_US - dec.backfill_us <= ts <= NOW_US + FUTURE_LIMIT_US
    for r in out.rejects:
        assert r.detail and len(r.detail) <= 500 and len(r.topic) <= 512
        assert "decoder error" not in r.detail, r
        assert r.payload is None or (len(r.payload) <= KEEP_BYTES and r.size == len(payload))
    return out


def _empty_batch(payload: bytes) -> bool:
    try:
        doc = json.loads(payload)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("points") == []


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A corpus message, mutated: bytes flipped, inserted, deleted, spliced with another, truncated."""
    topic, payload = draw(st.sampled_from(CORPUS))
    data = bytearray(payload)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "splice", "truncate", "dup"]))
        pos = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"-", b"1e309",
                                                  b"NaN", b"null", b"\xff", b"\x00", b'"ts":', b'"tag":', b"9" * 30]))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "splice":
            _, other = draw(st.sampled_from(CORPUS))
            cut = draw(st.integers(0, len(other)))
            data = data[:pos] + bytearray(other[cut:])
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            data += data[pos:pos + 64]
    if draw(st.booleans()):
        topic = draw(st.sampled_from(["hw/v1/E1/data", "hw/v1/E2/point/LT-1", "hw/v1/E1/point/AT-000",
                                      "hw/v1/E2/status", "hw/v1/E1/point/", "hw/v1/E1//data", topic]))
    return topic, bytes(data)


@FUZZ
@given(mutated())
def test_mutated_corpus_messages(msg: tuple[str, bytes]) -> None:
    check(Decoder(PARK), *msg)


values = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-2**53, 2**53), st.booleans(),
                   st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2))
not_numbers = st.one_of(st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2))
hostile_points = st.one_of(  # each is certainly refused, for its own reason
    st.fixed_dictionaries({"tag": st.sampled_from(["NOPE", "", "at-000"]), "value": values}),
    st.fixed_dictionaries({"tag": st.sampled_from(TAGS), "value": not_numbers}),
    st.fixed_dictionaries({"tag": st.sampled_from(TAGS), "value": st.just(1), "ts": st.one_of(
        st.integers(-2**63, NOW_MS - 8 * 86_400_000), st.integers(NOW_MS + 400_000, 2**63),
        st.text(max_size=10), st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False))}),
    st.fixed_dictionaries({"tag": st.sampled_from(TAGS), "value": st.just(1),
                           "q": st.sampled_from([-1, 3, 1.0, "0", None, True])}),
    st.dictionaries(st.sampled_from(["x", "v", "Tag"]), values, min_size=1, max_size=3),
    values,
)


@st.composite
def batches(draw: st.DrawFn) -> tuple[dict[str, object], list[tuple[str, float, int, int]]]:
    """A gateway batch with valid points (returned as the expected readings) among hostile ones."""
    batch_ts = draw(st.integers(NOW_MS - 86_400_000, NOW_MS))
    points: list[object] = []
    expected = []
    for _ in range(draw(st.integers(0, 30))):
        if draw(st.booleans()):
            tag = draw(st.sampled_from(TAGS))
            v = draw(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
            q = draw(st.integers(0, 2))
            p: dict[str, object] = {"tag": tag, "value": v, "q": q}
            ts = batch_ts
            if draw(st.booleans()):
                ts = draw(st.integers(NOW_MS - 6 * 86_400_000, NOW_MS + 240_000))
                p["ts"] = ts
            points.append(p)
            expected.append((tag, v, ts * 1000, q))
        else:
            points.append(draw(hostile_points))
    doc: dict[str, object] = {"ts": batch_ts, "points": points}
    if draw(st.booleans()):
        doc["seq"] = draw(st.integers(0, 2**63))
    return doc, expected


@settings(max_examples=max(1, BUDGET // 4), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_every_valid_point_of_a_hostile_batch_is_kept(case: tuple[dict[str, object], list[tuple[str, float, int, int]]]
                                                      ) -> None:
    doc, expected = case
    out = check(Decoder(PARK), "hw/v1/E1/data", json.dumps(doc).encode())
    by_id = {s.id: s.tag for s in PARK.sensors}
    got = [(by_id[sid], v, ts, q) for sid, ts, v, q in zip(out.sensor_id, out.ts_us, out.value, out.quality,
                                                           strict=True)]
    assert got == [(t, float(v), ts, q) for t, v, ts, q in expected]
    assert len(out.rejects) == len(doc["points"]) - len(expected)  # type: ignore[arg-type]
