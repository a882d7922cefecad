"""A generic JSON webhook for other platforms (a provincial system, a park platform).

POST {url} with the alarm's fields and the message text; with a secret, the body is signed:
``X-Hazardwatch-Signature: sha256=<hex HMAC-SHA256 of the body>``. Any 2xx is success.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import quote

import httpx

from alerting.channels.base import OutMessage, check_http
from alerting.errors import ChannelError
from park.site import WebhookChannel


class Webhook:
    name = "webhook"

    def __init__(self, cfg: WebhookChannel, client: httpx.AsyncClient) -> None:
        self.cfg = cfg
        self.client = client

    async def send(self, msg: OutMessage) -> str:
        body = json.dumps({"id": msg.key, "contact": msg.contact, "title": msg.title, "text": msg.text,
                           "alarm": msg.alarm}, ensure_ascii=False, default=str).encode()
        # header values are ASCII: the key (which names the contact, often in Chinese) is percent-encoded
        headers = {"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": quote(msg.key, safe="/")}
        if self.cfg.secret is not None:
            sig = hmac.new(self.cfg.secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
            headers["X-Hazardwatch-Signature"] = f"sha256={sig}"
        try:
            r = await self.client.post(self.cfg.url, content=body, headers=headers,
                                       timeout=self.cfg.timeout.total_seconds())
        except httpx.HTTPError as e:
            raise ChannelError(self.name, f"{type(e).__name__}: {e}") from e
        check_http(self.name, r)
        return f"HTTP {r.status_code}"
