"""What every channel implements: ``send(message) -> receipt`` or raise ChannelError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import httpx

from alerting.errors import ChannelError


@dataclass(frozen=True, slots=True)
class OutMessage:
    key: str  # idempotency key (alarm, unit, contact, channel, step)
    contact: str
    address: str  # phone, WeCom user id or robot key
    title: str
    text: str
    markdown: str
    alarm: dict[str, object]  # the alarm's fields, for structured channels (webhook, SMS templates)


class Channel(Protocol):
    name: str

    async def send(self, msg: OutMessage) -> str:
        """Deliver ``msg``; return the vendor's receipt; raise ChannelError on failure."""
        ...


def check_http(channel: str, r: httpx.Response) -> None:
    """Turn an HTTP answer into ChannelError: 429/5xx retry later, other 4xx are permanent."""
    if r.is_success:
        return
    if r.status_code == 429 or r.status_code >= 500:
        ra = r.headers.get("Retry-After")
        raise ChannelError(channel, f"HTTP {r.status_code}", retry_after=float(ra) if ra and ra.isdigit() else None,
                           rate_limited=r.status_code == 429)
    raise ChannelError(channel, f"HTTP {r.status_code}: {r.text[:200]}", permanent=True)
