"""Signed, expiring acknowledgement links that name their recipient: ``{public_url}/ack/{token}``.

The token carries the alarm id, an expiry, the unit the message went to and a keyed fingerprint
of the recipient's address (phone, WeCom user id, robot key), signed with HMAC-SHA256.
Acknowledging through it records that recipient — whoever the link was forwarded to — and
grants nothing else: opening shows the alarm, only a POST acknowledges (chat apps open links by
themselves to build previews). The address itself is never in the link: the fingerprint is keyed,
so a phone number cannot be recovered from it.

Short because SMS is short: varint alarm id, 4-byte expiry, unit code, 4-byte fingerprint and a
96-bit MAC in one URL-safe base64 string (about 38 characters).

A link is good until its expiry (the sender sets it; at most :data:`MAX_VALID` ahead) and only
while its alarm is open — the API refuses links of closed alarms.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from alerting.errors import BadLink

_DOMAIN = b"hazardwatch-ack-v2"  # a MAC made for anything else never passes here
_MAC = 12
_FP = 4
_UNIT_MAX = 64
MAX_VALID = timedelta(days=30)  # a link claiming a later expiry is refused as malformed


@dataclass(frozen=True, slots=True)
class LinkClaim:
    """What a verified link says: which alarm, until when, and to whom it was sent."""

    alarm_id: int
    expires: datetime
    unit: str  # unit code the message went to ("" if the sender named none)
    fingerprint: bytes  # keyed fingerprint of the recipient's address (b"" if none)


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    if not s or len(s) > 200 or not all(c.isalnum() or c in "-_" for c in s):
        raise BadLink("malformed")
    try:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (ValueError, binascii.Error):
        raise BadLink("malformed") from None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _unvarint(b: bytes) -> tuple[int, int]:
    n = shift = 0
    for i, byte in enumerate(b[:9]):
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n, i + 1
        shift += 7
    raise BadLink("malformed")


class LinkSigner:
    """Signs and checks acknowledgement tokens with one secret (the shell keeps it across restarts)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the link secret must be at least 16 bytes")
        self._key = secret

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, _DOMAIN + body, hashlib.sha256).digest()[:_MAC]

    def fingerprint(self, address: str) -> bytes:
        """A keyed 4-byte fingerprint of a recipient address (never reversible without the key)."""
        if not address:
            return b""
        return hmac.new(self._key, b"recipient:" + address.encode(), hashlib.sha256).digest()[:_FP]

    def sign(self, alarm_id: int, expires: datetime, unit: str = "", address: str = "") -> str:
        """A token for ``alarm_id`` sent to ``address`` of ``unit``, good until ``expires``."""
        if alarm_id <= 0:
            raise ValueError("acknowledgement links are for stored alarms (id > 0)")
        u = unit.encode()
        if len(u) > _UNIT_MAX:
            raise ValueError(f"unit code {unit!r} is too long for a link")
        exp = max(0, min(int(expires.timestamp()), 2**32 - 1))
        body = _varint(alarm_id) + struct.pack(">I", exp) + bytes([len(u)]) + u + self.fingerprint(address)
        return _b64(body + self._mac(body))

    def claim(self, token: str, now: datetime) -> LinkClaim:
        """What the token says; BadLink if it is malformed, forged, expired or claims an absurd expiry."""
        raw = _unb64(token)
        if len(raw) < _MAC + 6:
            raise BadLink("malformed")
        body, mac = raw[:-_MAC], raw[-_MAC:]
        if not hmac.compare_digest(self._mac(body), mac):
            raise BadLink("signature does not match")
        alarm_id, i = _unvarint(body)
        if alarm_id <= 0 or len(body) < i + 5:
            raise BadLink("malformed")
        (exp,) = struct.unpack(">I", body[i:i + 4])
        n = body[i + 4]
        unit_b, fp = body[i + 5:i + 5 + n], body[i + 5 + n:]
        if len(unit_b) != n or len(fp) not in (0, _FP):
            raise BadLink("malformed")
        try:
            unit = unit_b.decode()
        except UnicodeDecodeError:
            raise BadLink("malformed") from None
        expires = datetime.fromtimestamp(exp, UTC)
        if expires > now + MAX_VALID:
            raise BadLink("malformed expiry")
        if now >= expires:
            raise BadLink("expired")
        return LinkClaim(alarm_id, expires, unit, fp)

    def verify(self, token: str, now: datetime) -> int:
        """The alarm id the token is for; BadLink if it is malformed, forged or expired."""
        return self.claim(token, now).alarm_id
