"""The delivery policy (docs/contract.md §3: never abandoned while unacknowledged) — pure, on a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alerting.errors import ChannelError
from alerting.outbox import Claimed, decide
from park.site import Delivery

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
POLICY = Delivery()  # retry_max 2m, fallback after 3 failures, give up (settled alarms only) after 24h


def claimed(failures: int = 0, settled: bool = False, first_due: datetime = T0) -> Claimed:
    return Claimed(1, "1/E1/13800000003/sms/immediate", 1, "E1", "张工", "sms", "immediate", {}, failures + 1,
                   failures, first_due, settled)


def test_failures_back_off_to_the_cap_and_never_give_up_while_unacknowledged() -> None:
    c = claimed()
    waits = []
    for _ in range(40):  # a gateway down for hours
        d = decide(c, ChannelError("sms", "HTTP 503"), "", T0, POLICY)
        assert d.status == "pending" and d.retry_at is not None
        waits.append((d.retry_at - T0).total_seconds())
        c = claimed(d.failures, first_due=T0 - timedelta(days=2))
    assert max(waits) <= 120 and max(waits) >= 60, "capped at about 2 minutes"
    assert waits[0] <= 2


def test_fallback_once_after_a_few_failures_and_at_once_on_a_permanent_refusal() -> None:
    flags = [decide(claimed(f), ChannelError("sms", "HTTP 503"), "", T0, POLICY).fallback for f in range(6)]
    assert flags == [False, False, True, False, False, False]
    d = decide(claimed(), ChannelError("sms", "HTTP 400", permanent=True), "", T0, POLICY)
    assert d.fallback and d.status == "failed"


def test_a_rate_limit_waits_as_told_and_is_not_a_failure() -> None:
    c = claimed(failures=2)
    d = decide(c, ChannelError("wecom_robot", "errcode 45009", retry_after=60, rate_limited=True), "", T0, POLICY)
    assert (d.outcome, d.status, d.failures, d.fallback) == ("rate_limited", "pending", 2, False)
    assert d.retry_at is not None and 60 <= (d.retry_at - T0).total_seconds() <= 66


def test_only_messages_of_settled_alarms_give_up_and_only_after_a_day() -> None:
    old, err = T0 - timedelta(hours=25), ChannelError("sms", "x")
    assert decide(claimed(5, settled=False, first_due=old), err, "", T0, POLICY).status == "pending"
    assert decide(claimed(5, settled=True, first_due=T0), err, "", T0, POLICY).status == "pending"
    assert decide(claimed(5, settled=True, first_due=old), err, "", T0, POLICY).status == "failed"


def test_a_channel_bug_is_a_failed_attempt_not_a_crash() -> None:
    d = decide(claimed(), KeyError("boom"), "", T0, POLICY)
    assert (d.outcome, d.status) == ("failed", "pending") and "KeyError" in d.detail
