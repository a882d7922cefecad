"""Alerting's exception family."""

from __future__ import annotations

from park.errors import HazardwatchError


class AlertingError(HazardwatchError):
    """Raised by the alerting stage."""


class BadLink(AlertingError):
    """An acknowledgement link that is malformed, forged or expired."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"acknowledgement link refused: {reason}")


class ChannelError(AlertingError):
    """A channel could not deliver; ``retry_after`` when the vendor said when to try again."""

    def __init__(self, channel: str, message: str, *, retry_after: float | None = None,
                 permanent: bool = False, rate_limited: bool = False) -> None:
        self.channel = channel
        self.retry_after = retry_after
        self.permanent = permanent
        self.rate_limited = rate_limited
        super().__init__(f"{channel}: {message}")


class NotLeading(AlertingError):
    """A message not sent because this instance no longer leads (another one took over, or will)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"message {key} not sent: this instance no longer leads")
