"""The decoder alone: both payload forms, every rejection reason, and no exception for any input."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.decode import Decoded, Decoder
from ingest.errors import RejectReason as R
from park.model import Park
from park.types import epoch_us
from tests.ingest_helpers import site

PARK = Park.from_site(site())
DEC = Decoder(PARK, "hw/v1")
NOW = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
NOW_US = epoch_us(NOW)
NOW_MS = NOW_US // 1000
SID = {s.tag: s.id for s in PARK.sensors}


def dec(topic: str, payload: bytes | str | object) -> Decoded:
    out = Decoded()
    raw = payload if isinstance(payload, bytes) else (payload.encode() if isinstance(payload, str)
                                                      else json.dumps(payload).encode())
    DEC.decode(out, topic, raw, NOW_US)
    return out


def test_batch_with_point_ts_override_bool_and_quality() -> None:
    out = dec("hw/v1/E1/data", {"ts": NOW_MS, "seq": 1, "points": [
        {"tag": "AT-000", "value": 8.73},
        {"tag": "AT-001", "value": True, "q": 2},
        {"tag": "AT-002", "value": 3, "ts": "2026-11-23T08:00:00.120+08:00"},
    ]})
    assert out.rejects == []
    assert out.sensor_id == [SID["AT-000"], SID["AT-001"], SID["AT-002"]]
    assert out.ts_us == [NOW_US, NOW_US, NOW_US + 120_000]  # 08:00+08:00 is 00:00Z
    assert out.value == [8.73, 1.0, 3.0] and out.quality == [0, 2, 0]


def test_the_readings_move_into_the_batch_and_the_rejects_stay() -> None:
    """The decoded lists are let go once the arrays are built: pending work waits for its commit
    holding the arrays, not a Python object per reading beside them (a backlog's memory peak)."""
    out = dec("hw/v1/E1/data", {"ts": NOW_MS, "points": [{"tag": "AT-000", "value": 8.73},
                                                         {"tag": "NOPE", "value": 1}]})
    b = out.batch()
    assert b.sensor_id.tolist() == [SID["AT-000"]] and b.value.tolist() == [8.73]
    assert (out.sensor_id, out.ts_us, out.value, out.quality) == ([], [], [], []) and len(out) == 0
    assert [r.reason for r in out.rejects] == [R.UNKNOWN_TAG]


def test_backfill_topic_is_a_batch_decoded_exactly_like_data() -> None:
    """docs/contract.md §1: …/backfill carries the same gateway batch as …/data (history re-sent after an
    outage); the same readings come out, and the same rejections, each on its own topic."""
    three_hours_ago = NOW_MS - 3 * 3600 * 1000
    doc = {"ts": three_hours_ago, "seq": 7, "points": [
        {"tag": "AT-000", "value": 8.73}, {"tag": "AT-001", "value": True, "q": 2},
        {"tag": "AT-002", "value": 3, "ts": three_hours_ago + 500}, {"tag": "NOPE", "value": 1},
        {"tag": "AT-003", "value": "x"}]}
    live, history = dec("hw/v1/E1/data", doc), dec("hw/v1/E1/backfill", doc)
    assert history.sensor_id == live.sensor_id == [SID["AT-000"], SID["AT-001"], SID["AT-002"]]
    assert (history.ts_us, history.value, history.quality) == (live.ts_us, live.value, live.quality)
    assert [r.reason for r in history.rejects] == [r.reason for r in live.rejects] == [R.UNKNOWN_TAG, R.BAD_VALUE]
    assert {r.topic for r in history.rejects} == {"hw/v1/E1/backfill"}
    assert [r.reason for r in dec("hw/v1/E1/backfill", b"{").rejects] == [R.BAD_JSON]
    assert [r.reason for r in dec("hw/v1/E9/backfill", doc).rejects] == [R.UNKNOWN_ENTERPRISE]
    assert [r.reason for r in dec("hw/v1/E1/backfill/x", doc).rejects] == [R.BAD_TOPIC]


def test_single_point_forms() -> None:
    assert dec("hw/v1/E1/point/AT-003", "12.5").ts_us == [NOW_US]  # bare: stamped on receipt
    assert dec("hw/v1/E1/point/AT-003", "false").value == [0.0]
    out = dec("hw/v1/E1/point/AT-003", {"value": 1, "ts": NOW_MS - 1000, "q": 1})
    assert (out.ts_us, out.quality) == ([NOW_US - 1_000_000], [1])


def test_status_and_seq_gaps() -> None:
    out = dec("hw/v1/E2/status", {"online": False})
    assert [(s.enterprise, s.online) for s in out.statuses] == [("E2", False)]
    d = Decoder(PARK)
    o = Decoded()
    for seq in (1, 2, 5, 5, 6):
        d.decode(o, "hw/v1/E2/data", json.dumps({"ts": NOW_MS, "seq": seq, "points": []}).encode(), NOW_US)
    assert o.seq_gaps == 2


BAD = [
    ("invalid JSON", "hw/v1/E1/data", b"{", R.BAD_JSON),
    ("not UTF-8", "hw/v1/E1/data", b"\xff\xfe\x00", R.BAD_JSON),
    ("NaN", "hw/v1/E1/point/AT-000", b"NaN", R.BAD_JSON),
    ("Infinity in a batch", "hw/v1/E1/data", b'{"ts": 1, "points": [{"tag": "AT-000", "value": Infinity}]}',
     R.BAD_JSON),
    ("overflowing number", "hw/v1/E1/point/AT-000", b"1e400", R.BAD_JSON),
    ("unknown tag", "hw/v1/E1/data", {"ts": NOW_MS, "points": [{"tag": "XX-1", "value": 1}]}, R.UNKNOWN_TAG),
    ("unknown tag on point topic", "hw/v1/E1/point/XX-1", b"1", R.UNKNOWN_TAG),
    ("unknown enterprise", "hw/v1/E9/data", {"ts": NOW_MS, "points": []}, R.UNKNOWN_ENTERPRISE),
    ("topic outside the table", "hw/v1/E1/config", b"{}", R.BAD_TOPIC),
    ("too many levels", "hw/v1/E1/point/AT-000/x", b"1", R.BAD_TOPIC),
    ("other prefix", "other/E1/data", b"{}", R.BAD_TOPIC),
    ("oversize", "hw/v1/E1/data", b" " * 300_000, R.OVERSIZE),
    ("future ts", "hw/v1/E1/data", {"ts": NOW_MS + 6 * 60_000, "points": [{"tag": "AT-000", "value": 1}]},
     R.FUTURE_TIMESTAMP),
    ("no ts anywhere", "hw/v1/E1/data", {"points": [{"tag": "AT-000", "value": 1}]}, R.BAD_TIMESTAMP),
    ("unparsable ts", "hw/v1/E1/data", {"ts": "yesterday", "points": []}, R.BAD_TIMESTAMP),
    ("ts without offset", "hw/v1/E1/point/AT-000", {"value": 1, "ts": "2026-11-23T08:00:00"}, R.BAD_TIMESTAMP),
    ("boolean ts", "hw/v1/E1/data", {"ts": True, "points": []}, R.BAD_TIMESTAMP),
    ("float ms ts", "hw/v1/E1/data", {"ts": 1.5, "points": []}, R.BAD_TIMESTAMP),
    ("value as string", "hw/v1/E1/data", {"ts": NOW_MS, "points": [{"tag": "AT-000", "value": "12.5"}]},
     R.BAD_VALUE),
    ("null value", "hw/v1/E1/point/AT-000", b"null", R.BAD_VALUE),
    ("quality out of range", "hw/v1/E1/data", {"ts": NOW_MS, "points": [{"tag": "AT-000", "value": 1, "q": 5}]},
     R.BAD_QUALITY),
    ("unknown batch field", "hw/v1/E1/data", {"ts": NOW_MS, "points": [], "gw": "x"}, R.BAD_PAYLOAD),
    ("points not a list", "hw/v1/E1/data", {"ts": NOW_MS, "points": {}}, R.BAD_PAYLOAD),
    ("batch is an array", "hw/v1/E1/data", [1, 2], R.BAD_PAYLOAD),
    ("unknown point field", "hw/v1/E1/data", {"ts": NOW_MS, "points": [{"tag": "AT-000", "v": 1}]}, R.BAD_POINT),
    ("status not boolean", "hw/v1/E1/status", {"online": "yes"}, R.BAD_PAYLOAD),
    ("single point bad object", "hw/v1/E1/point/AT-000", {"val": 1}, R.BAD_PAYLOAD),
    ("negative seq", "hw/v1/E1/data", {"ts": NOW_MS, "seq": -1, "points": []}, R.BAD_PAYLOAD),
]


def test_every_rejection_has_its_reason() -> None:
    for name, topic, payload, reason in BAD:
        out = dec(topic, payload)
        assert [r.reason for r in out.rejects] == [reason], name
        assert out.sensor_id == [], name
        assert out.rejects[0].detail, f"{name}: a reject must say why"


def test_one_bad_point_does_not_reject_its_neighbours() -> None:
    out = dec("hw/v1/E1/data", {"ts": NOW_MS, "points": [
        {"tag": "AT-000", "value": 1}, {"tag": "AT-001", "value": "x"}, {"tag": "NOPE", "value": 1},
        {"tag": "AT-002", "value": 2, "ts": NOW_MS + 3_600_000}, {"tag": "AT-003", "value": 4}]})
    assert out.value == [1.0, 4.0]
    assert sorted(r.reason for r in out.rejects) == sorted([R.BAD_VALUE, R.UNKNOWN_TAG, R.FUTURE_TIMESTAMP])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(
        st.sampled_from(["ts", "seq", "points", "tag", "value", "q", "online", "x"]), kids, max_size=5),
    max_leaves=30,
)
topics = st.sampled_from(["hw/v1/E1/data", "hw/v1/E1/point/AT-000", "hw/v1/E2/status", "hw/v1/E1/point/",
                          "hw/v1//data", "hw/v1/E1", "x", "hw/v1/E1/data/extra"]) | st.text(max_size=40)


@settings(max_examples=400, deadline=None)
@given(topic=topics, payload=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(topic: str, payload: bytes) -> None:
    out = Decoded()
    DEC.decode(out, topic, payload, NOW_US)
    assert len(out.sensor_id) + len(out.rejects) + len(out.statuses) >= 1 or payload.strip() == b""


@settings(max_examples=400, deadline=None)
@given(topic=topics, doc=json_values)
def test_arbitrary_json_never_raises(topic: str, doc: object) -> None:
    out = Decoded()
    DEC.decode(out, topic, json.dumps(doc).encode(), NOW_US)
    assert all(r.detail for r in out.rejects)
    assert not any("decoder error" in r.detail for r in out.rejects), out.rejects
