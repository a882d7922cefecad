"""Ingest's exception family and the fixed set of reasons an input is rejected for."""

from __future__ import annotations

import enum

from park.errors import HazardwatchError


class IngestError(HazardwatchError):
    """Raised inside ingest; bad input is never raised, it is rejected and counted."""


class RejectReason(enum.StrEnum):
    BAD_TOPIC = "bad_topic"  # not one of the contract's topics
    UNKNOWN_ENTERPRISE = "unknown_enterprise"
    UNKNOWN_TAG = "unknown_tag"
    OVERSIZE = "oversize"
    BAD_JSON = "bad_json"  # not UTF-8 JSON (NaN/Infinity included)
    BAD_PAYLOAD = "bad_payload"  # JSON of the wrong shape or with unknown fields
    BAD_POINT = "bad_point"  # one point of a batch malformed
    BAD_VALUE = "bad_value"  # not a finite number or boolean
    BAD_QUALITY = "bad_quality"
    BAD_TIMESTAMP = "bad_timestamp"  # missing, unparsable, without an offset, out of range
    FUTURE_TIMESTAMP = "future_timestamp"  # more than 5 minutes ahead of the receive time
    OLD_TIMESTAMP = "old_timestamp"  # older than the backfill bound (default 7 days)
