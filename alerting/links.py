"""Signed, expiring acknowledgement links: ``{public_url}/ack/{token}``.

The token carries the alarm id and an expiry, signed with HMAC-SHA256; it grants nothing but
showing that alarm and acknowledging it with a button (a POST — chat apps open links by
themselves to build previews, so opening must never acknowledge).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

from alerting.errors import BadLink


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class LinkSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the link secret must be at least 16 bytes")
        self._key = secret

    def sign(self, alarm_id: int, expires: datetime) -> str:
        body = f"{alarm_id}.{int(expires.timestamp())}".encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()[:16]
        return f"{_b64(body)}.{_b64(mac)}"

    def verify(self, token: str, now: datetime) -> int:
        """The alarm id the token is for; BadLink if it is malformed, forged or expired."""
        try:
            body_s, mac_s = token.split(".")
            body, mac = _unb64(body_s), _unb64(mac_s)
        except ValueError:
            raise BadLink("malformed") from None
        if not hmac.compare_digest(hmac.new(self._key, body, hashlib.sha256).digest()[:16], mac):
            raise BadLink("signature does not match")
        try:
            alarm_s, exp_s = body.decode().split(".")
            alarm_id, exp = int(alarm_s), int(exp_s)
        except ValueError:
            raise BadLink("malformed") from None
        if now >= datetime.fromtimestamp(exp, UTC):
            raise BadLink("expired")
        return alarm_id
