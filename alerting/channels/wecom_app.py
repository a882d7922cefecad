"""WeCom application message to a person (``touser``), with the access token cached and refreshed."""

from __future__ import annotations

import time

import httpx

from alerting.channels.base import OutMessage, check_http
from alerting.errors import ChannelError
from park.site import WecomChannel

TOKEN_EXPIRED = (40014, 42001, 40001)


class WecomApp:
    name = "wecom"

    def __init__(self, cfg: WecomChannel, client: httpx.AsyncClient) -> None:
        if not (cfg.corp_id and cfg.agent_id and cfg.secret):
            raise ValueError("channels.wecom needs corp_id, agent_id and secret for application messages")
        self.cfg = cfg
        self.client = client
        self._token: str | None = None
        self._expires = 0.0

    async def _access_token(self, refresh: bool = False) -> str:
        if self._token and not refresh and time.monotonic() < self._expires:
            return self._token
        assert self.cfg.secret is not None
        r = await self.client.get(f"{self.cfg.base_url.rstrip('/')}/cgi-bin/gettoken",
                                  params={"corpid": self.cfg.corp_id, "corpsecret": self.cfg.secret.get_secret_value()},
                                  timeout=self.cfg.timeout.total_seconds())
        check_http(self.name, r)
        data = r.json()
        if data.get("errcode", 0) != 0:
            raise ChannelError(self.name, f"gettoken errcode {data.get('errcode')}: {data.get('errmsg')}")
        self._token = str(data["access_token"])
        self._expires = time.monotonic() + int(data.get("expires_in", 7200)) - 300
        return self._token

    async def send(self, msg: OutMessage) -> str:
        body = {"touser": msg.address, "msgtype": "markdown", "agentid": self.cfg.agent_id,
                "markdown": {"content": msg.markdown[:2000]}}
        try:
            for attempt in (0, 1):
                token = await self._access_token(refresh=attempt == 1)
                r = await self.client.post(f"{self.cfg.base_url.rstrip('/')}/cgi-bin/message/send",
                                           params={"access_token": token}, json=body,
                                           timeout=self.cfg.timeout.total_seconds())
                check_http(self.name, r)
                data = r.json()
                code = data.get("errcode")
                if code == 0:
                    return f"msgid {data.get('msgid', '')}"
                if code not in TOKEN_EXPIRED:
                    raise ChannelError(self.name, f"errcode {code}: {data.get('errmsg')}")
        except httpx.HTTPError as e:
            raise ChannelError(self.name, f"{type(e).__name__}: {e}") from e
        raise ChannelError(self.name, "access token refused twice")
