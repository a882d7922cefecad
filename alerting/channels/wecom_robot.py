"""WeCom (企业微信) group robot: markdown to ``{base_url}/cgi-bin/webhook/send?key=…``.

WeCom allows 20 messages a minute per robot; sending more earns errcode 45009. A local sliding
window keeps under the limit, and a 45009 anyway backs off for the rest of the minute.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque

import httpx

from alerting.channels.base import OutMessage, check_http
from alerting.errors import ChannelError
from park.site import WecomChannel

RATE_LIMITED = 45009
INVALID_KEY = 93000


class WecomRobot:
    name = "wecom_robot"

    def __init__(self, cfg: WecomChannel, client: httpx.AsyncClient) -> None:
        self.cfg = cfg
        self.client = client
        self.sent: dict[str, deque[float]] = defaultdict(deque)

    async def send(self, msg: OutMessage) -> str:
        now = time.monotonic()
        window = self.sent[msg.address]
        while window and now - window[0] > 60:
            window.popleft()
        if len(window) >= self.cfg.robot_per_minute:
            raise ChannelError(self.name, "20 messages a minute reached for this robot",
                               retry_after=60 - (now - window[0]) + 0.5, rate_limited=True)
        url = f"{self.cfg.base_url.rstrip('/')}/cgi-bin/webhook/send"
        body = {"msgtype": "markdown", "markdown": {"content": msg.markdown[:4000]}}
        try:
            r = await self.client.post(url, params={"key": msg.address}, json=body,
                                       timeout=self.cfg.timeout.total_seconds())
        except httpx.HTTPError as e:
            raise ChannelError(self.name, f"{type(e).__name__}: {e}") from e
        check_http(self.name, r)
        window.append(now)
        data = r.json()
        code = data.get("errcode")
        if code == 0:
            return "errcode 0"
        if code == RATE_LIMITED:
            raise ChannelError(self.name, "errcode 45009 (too frequent)", retry_after=60, rate_limited=True)
        raise ChannelError(self.name, f"errcode {code}: {data.get('errmsg')}", permanent=code == INVALID_KEY)
