"""Decoding MQTT messages into readings (docs/contract.md §1) — pure, no IO, never raises on bad input.

Every message is decoded into a shared :class:`Decoded` accumulator: good readings into flat
columns, rejections with their reason, gateway status changes. One bad point of a batch rejects
only that point.

Cheap checks first: the size of a message is checked before anything else looks at it, so an
oversize payload is never parsed and never kept whole, whatever its topic. A rejected message is
kept as its first :data:`KEEP_BYTES` bytes and its length. Reading times are checked against the
receive time: more than 5 minutes ahead, or older than the backfill bound (default 7 days), is
refused with the reason — nothing downstream ever sees a reading "from 1970".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from ingest import marks
from ingest.clock import ClockEstimator
from ingest.errors import RejectReason as R
from park.model import Park
from park.settings import DEFAULT_BACKFILL
from park.types import GatewayStatus, ReadingBatch, epoch_us, from_epoch_us

FUTURE_LIMIT_US = 5 * 60 * 1_000_000  # docs/contract.md §1: more than 5 minutes ahead is rejected
DEFAULT_MAX_PAYLOAD = 256 * 1024
KEEP_BYTES = 1024  # of a rejected payload, for inspection
MAX_SEQ_GAP = 1_000_000  # one message counts at most this many missing batches (a counter reset is no gap)
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_BATCH_KEYS = frozenset(("ts", "seq", "points"))
_POINT_KEYS = frozenset(("tag", "value", "ts", "q"))
_SINGLE_KEYS = frozenset(("value", "ts", "q"))
_NUMBERS = frozenset((float, int, bool))


@dataclass(frozen=True, slots=True)
class Reject:
    reason: R
    topic: str
    detail: str
    payload: bytes | None  # at most KEEP_BYTES of the message for message-level rejects; None for one point
    size: int = 0  # the whole message's length in bytes


@dataclass(slots=True)
class Decoded:
    """Accumulates the decoding of many messages until the writer takes them."""

    sensor_id: list[int] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    quality: list[int] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    statuses: list[GatewayStatus] = field(default_factory=list)
    seq_gaps: int = 0
    newest_received_us: int = 0

    def __len__(self) -> int:
        return len(self.sensor_id)

    def reject(self, reason: R, topic: str, detail: str, payload: bytes | None) -> None:
        size = len(payload) if payload is not None else 0
        kept = payload[:KEEP_BYTES] if payload is not None and size > KEEP_BYTES else payload
        self.rejects.append(Reject(reason, topic[:512], detail[:500], kept, size))

    def batch(self) -> ReadingBatch:
        """The readings as arrays; they move out (``len`` is 0 after), rejects and statuses stay.

        The lists hold a Python object and a slot per reading, about three times the arrays: kept
        until the commit, a backlog drained after a stall held them for every pending chunk, and glibc
        kept the pages of that peak (resident memory stepped up after each stall)."""
        b = ReadingBatch(
            sensor_id=np.fromiter(self.sensor_id, np.int32, len(self.sensor_id)),
            ts_us=np.fromiter(self.ts_us, np.int64, len(self.ts_us)),
            value=np.fromiter(self.value, np.float64, len(self.value)),
            quality=np.fromiter(self.quality, np.int8, len(self.quality)),
            received_us=self.newest_received_us,
        )
        self.sensor_id, self.ts_us, self.value, self.quality = [], [], [], []
        return b


class Decoder:
    """Decodes messages under ``prefix`` for the sensors of ``park``."""

    def __init__(self, park: Park, prefix: str = "hw/v1", max_payload: int = DEFAULT_MAX_PAYLOAD,
                 backfill: timedelta = DEFAULT_BACKFILL) -> None:
        self.prefix = prefix.strip("/") + "/"
        self.max_payload = max_payload
        self.backfill_us = int(backfill.total_seconds() * 1_000_000)
        self.clocks = ClockEstimator()
        # what counts as a backfill when marking late readings (the rules' own bound, park.site)
        self.late_us = int(park.site.alarm_management.backfill_after.total_seconds() * 1_000_000)
        self.ent_codes = list(park.enterprises)
        ent_pos = {e: k for k, e in enumerate(self.ent_codes)}
        self.sensor_ent = np.full(max((s.id for s in park.sensors), default=0) + 1, -1, np.int32)
        for s in park.sensors:
            self.sensor_ent[s.id] = ent_pos.get(s.enterprise, -1)
        self.tags: dict[str, dict[str, int]] = {}
        for s in park.sensors:
            self.tags.setdefault(s.enterprise, {})[s.tag] = s.id
        for code in park.enterprises:
            self.tags.setdefault(code, {})
        self.last_seq: dict[str, int] = {}

    def late_marks(self, batch: ReadingBatch) -> npt.NDArray[np.void]:
        """The readings in ``batch`` that arrived more than ``backfill_after`` after their time, each
        gateway's measured clock offset removed — a gateway whose clock is slow is not backfilling — as
        one :data:`ingest.marks.MARK` per sensor, in sensor order, ``received`` the batch's arrival.
        Nothing when the batch is live (the usual case)."""
        if not len(batch) or not batch.received_us:
            return marks.empty()
        delay = batch.received_us - batch.ts_us
        late = delay > self.late_us
        if not late.any():
            return marks.empty()
        sid = batch.sensor_id[late]
        ts = batch.ts_us[late]
        ent = self.sensor_ent[np.clip(sid, 0, len(self.sensor_ent) - 1)]
        offsets = np.zeros(len(self.ent_codes) + 1, np.int64)
        for e in map(int, np.unique(ent)):
            est = self.clocks.estimate(self.ent_codes[e]) if e >= 0 else None
            if est is not None:
                offsets[e] = int(est * 1_000_000)
        keep = delay[late] + offsets[ent] > self.late_us
        if not keep.any():
            return marks.empty()
        one = np.empty(int(keep.sum()), marks.MARK)
        one["sid"], one["start"], one["end"] = sid[keep], ts[keep], ts[keep]
        one["received"], one["n"] = batch.received_us, 1
        return marks.coalesce(one)

    def decode(self, out: Decoded, topic: str, payload: bytes, received_us: int) -> None:
        """Decode one message into ``out``; anything wrong becomes a :class:`Reject`, never an exception."""
        if received_us > out.newest_received_us:
            out.newest_received_us = received_us
        try:
            self._decode(out, topic, payload, received_us)
        except Exception as e:  # a decoder bug must not stop the stream: keep the message, say why
            out.reject(R.BAD_PAYLOAD, topic, f"decoder error: {type(e).__name__}: {str(e)[:200]}", payload)

    def _decode(self, out: Decoded, topic: str, payload: bytes, received_us: int) -> None:
        # size first: nothing below parses or keeps more than max_payload bytes of anybody's message
        if len(payload) > self.max_payload:
            return out.reject(R.OVERSIZE, topic, f"{len(payload)} bytes > {self.max_payload}", payload)
        if not topic.startswith(self.prefix):
            return out.reject(R.BAD_TOPIC, topic, f"topic outside {self.prefix}#", payload)
        parts = topic[len(self.prefix):].split("/")
        ent = parts[0]
        n = len(parts)
        if n == 2 and (parts[1] == "data" or parts[1] == "backfill"):
            kind = "data"  # …/backfill: history re-sent after an outage, the same batch, judged the same
        elif n == 3 and parts[1] == "point" and parts[2]:
            kind = "point"
        elif n == 2 and parts[1] == "status":
            kind = "status"
        else:
            return out.reject(R.BAD_TOPIC, topic,
                              "use {prefix}/{enterprise}/data, …/backfill, …/point/{tag} or …/status", payload)
        tags = self.tags.get(ent)
        if tags is None:
            return out.reject(R.UNKNOWN_ENTERPRISE, topic, f"enterprise {_excerpt(ent)} is not in the site file",
                              payload)
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as e:  # NaN and Infinity included: orjson refuses them
            return out.reject(R.BAD_JSON, topic, str(e)[:200], payload)
        if kind == "data":
            self._batch(out, topic, ent, tags, doc, payload, received_us)
        elif kind == "point":
            self._point(out, topic, ent, tags, parts[2], doc, payload, received_us)
        elif type(doc) is dict and doc.keys() == {"online"} and type(doc["online"]) is bool:
            out.statuses.append(GatewayStatus(ent, doc["online"], from_epoch_us(received_us)))
        else:
            out.reject(R.BAD_PAYLOAD, topic, 'status must be {"online": true|false}', payload)

    def _batch(self, out: Decoded, topic: str, ent: str, tags: dict[str, int], doc: Any, payload: bytes,
               received_us: int) -> None:
        if type(doc) is not dict or type(doc.get("points")) is not list or not doc.keys() <= _BATCH_KEYS:
            extra = sorted(set(doc) - _BATCH_KEYS) if type(doc) is dict else []
            why = f"unknown fields {_excerpt(extra)}" if extra else 'a batch is {"ts": …, "seq": …, "points": [...]}'
            return out.reject(R.BAD_PAYLOAD, topic, why, payload)
        batch_ts: int | None = None
        if "ts" in doc:
            batch_ts = _ts_us(doc["ts"])
            if batch_ts is None:
                return out.reject(R.BAD_TIMESTAMP, topic, f"batch ts {_excerpt(doc['ts'])}", payload)
        seq = doc.get("seq")
        if seq is not None:
            if type(seq) is not int or seq < 0:
                return out.reject(R.BAD_PAYLOAD, topic, f"seq {_excerpt(seq)} is not a counter", payload)
            last = self.last_seq.get(ent)
            if last is not None and seq > last + 1:
                out.seq_gaps += min(seq - last - 1, MAX_SEQ_GAP)
            if last is None or seq > last:
                self.last_seq[ent] = seq
        future = received_us + FUTURE_LIMIT_US
        old = received_us - self.backfill_us
        points = doc["points"]
        if points and batch_ts is not None and old <= batch_ts <= future and self._plain_batch(out, tags, points,
                                                                                                batch_ts):
            self.clocks.observe(ent, batch_ts, received_us)
            return
        newest = -1  # the freshest reading time of the message, for the gateway's clock
        sid_out, ts_out, val_out, q_out = out.sensor_id, out.ts_us, out.value, out.quality
        for p in points:
            if type(p) is not dict or not p.keys() <= _POINT_KEYS:
                out.reject(R.BAD_POINT, topic, _excerpt(p), None)
                continue
            tag = p.get("tag")
            sid = tags.get(tag) if type(tag) is str else None
            if sid is None:
                out.reject(R.UNKNOWN_TAG, topic, f"tag {_excerpt(tag)} of {ent}", None)
                continue
            v: Any = p.get("value")
            tv = type(v)
            fv: float
            if tv is float:
                fv = v
            elif tv is int:
                fv = float(v)
            elif tv is bool:
                fv = 1.0 if v else 0.0
            else:
                out.reject(R.BAD_VALUE, topic, f"{tag}: value {_excerpt(v)}", None)
                continue
            q = p.get("q", 0)
            if type(q) is not int or not 0 <= q <= 2:
                out.reject(R.BAD_QUALITY, topic, f"{tag}: q {_excerpt(q)}", None)
                continue
            if "ts" in p:
                ts = _ts_us(p["ts"])
                if ts is None:
                    out.reject(R.BAD_TIMESTAMP, topic, f"{tag}: ts {_excerpt(p['ts'])}", None)
                    continue
            elif batch_ts is not None:
                ts = batch_ts
            else:
                out.reject(R.BAD_TIMESTAMP, topic, f"{tag}: no ts on the point or the batch", None)
                continue
            if ts > newest:
                newest = ts
            if ts > future:
                out.reject(R.FUTURE_TIMESTAMP, topic, f"{tag}: ts {from_epoch_us(ts).isoformat()} is more than 5 min "
                           "ahead of hazardwatch's clock (check the gateway's time)", None)
                continue
            if ts < old:
                out.reject(R.OLD_TIMESTAMP, topic, f"{tag}: ts {from_epoch_us(ts).isoformat()} is older than the "
                           f"backfill bound ({_days(self.backfill_us)})", None)
                continue
            sid_out.append(sid)
            ts_out.append(ts)
            val_out.append(fv)
            q_out.append(q)
        if newest >= 0:
            self.clocks.observe(ent, newest, received_us)

    @staticmethod
    def _plain_batch(out: Decoded, tags: dict[str, int], points: list[Any], ts: int) -> bool:
        """The common case in a few list passes: every point exactly ``{"tag": known, "value": number}``
        under the batch's (valid) time. False, having added nothing, when any point is otherwise: the
        point-by-point path then says what is wrong with which."""
        try:
            sids = [tags[p["tag"]] for p in points]
            values = [p["value"] for p in points]
        except (KeyError, TypeError, IndexError):  # unknown tag, not an object, an unhashable tag …
            return False
        if not all(len(p) == 2 for p in points) or not all(type(v) in _NUMBERS for v in values):
            return False
        n = len(sids)
        out.sensor_id += sids
        out.ts_us += [ts] * n
        out.value += values  # int and bool become float64 when the batch is built
        out.quality += [0] * n
        return True

    def _point(self, out: Decoded, topic: str, ent: str, tags: dict[str, int], tag: str, doc: Any, payload: bytes,
               received_us: int) -> None:
        sid = tags.get(tag)
        if sid is None:
            return out.reject(R.UNKNOWN_TAG, topic, f"tag {_excerpt(tag)}", payload)
        ts = received_us  # a bare value is stamped with the time it is received
        stamped = False
        q = 0
        if type(doc) is dict:
            if not doc.keys() <= _SINGLE_KEYS or "value" not in doc:
                return out.reject(R.BAD_PAYLOAD, topic, 'use a bare value or {"value": …, "ts": …, "q": …}', payload)
            if "ts" in doc:
                t = _ts_us(doc["ts"])
                if t is None:
                    return out.reject(R.BAD_TIMESTAMP, topic, f"ts {_excerpt(doc['ts'])}", payload)
                ts = t
                stamped = True
            q = doc.get("q", 0)
            if type(q) is not int or not 0 <= q <= 2:
                return out.reject(R.BAD_QUALITY, topic, f"q {_excerpt(q)}", payload)
            doc = doc["value"]
        tv = type(doc)
        if tv is float or tv is int:
            fv = float(doc)
        elif tv is bool:
            fv = 1.0 if doc else 0.0
        else:
            return out.reject(R.BAD_VALUE, topic, f"value {_excerpt(doc)}", payload)
        if stamped:  # a bare value says nothing about the gateway's clock
            self.clocks.observe(ent, ts, received_us)
            if ts > received_us + FUTURE_LIMIT_US:
                return out.reject(R.FUTURE_TIMESTAMP, topic, f"ts {from_epoch_us(ts).isoformat()} is more than 5 min "
                                  "ahead of hazardwatch's clock (check the gateway's time)", payload)
            if ts < received_us - self.backfill_us:
                return out.reject(R.OLD_TIMESTAMP, topic, f"ts {from_epoch_us(ts).isoformat()} is older than the "
                                  f"backfill bound ({_days(self.backfill_us)})", payload)
        out.sensor_id.append(sid)
        out.ts_us.append(ts)
        out.value.append(fv)
        out.quality.append(q)


def _ts_us(v: Any) -> int | None:
    """Epoch ms (integer) or RFC 3339 with an offset, as UTC epoch µs; None when it is neither."""
    tv = type(v)
    if tv is int:
        return v * 1000 if 0 <= v <= _MAX_MS else None
    if tv is str and 10 <= len(v) <= 40:
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            return None
        if dt.tzinfo is None or dt.year < 1970:
            return None  # without an offset the time is ambiguous: refuse rather than guess
        return epoch_us(dt)
    return None


def _days(us: int) -> str:
    d = us / 86_400_000_000
    return f"{d:g} d" if d >= 1 else f"{us / 3_600_000_000:g} h"


def _excerpt(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 120 else text[:117] + "..."
