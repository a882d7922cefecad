"""SMS through the contract's generic HTTP gateway: POST {url} {"phone", "text", "id"}; any 2xx is success."""

from __future__ import annotations

import httpx

from alerting.channels.base import OutMessage, check_http
from alerting.errors import ChannelError
from park.site import SmsHttp


class HttpSms:
    name = "sms"

    def __init__(self, cfg: SmsHttp, client: httpx.AsyncClient) -> None:
        self.cfg = cfg
        self.client = client

    async def send(self, msg: OutMessage) -> str:
        headers = {"Authorization": f"Bearer {self.cfg.token.get_secret_value()}"} if self.cfg.token else {}
        try:
            r = await self.client.post(self.cfg.url, json={"phone": msg.address, "text": msg.text, "id": msg.key},
                                       headers=headers, timeout=self.cfg.timeout.total_seconds())
        except httpx.HTTPError as e:
            raise ChannelError(self.name, f"{type(e).__name__}: {e}") from e
        check_http(self.name, r)
        return f"HTTP {r.status_code}"
