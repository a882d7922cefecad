"""Aliyun (阿里云) SendSms, RPC API 2017-05-25 with signature version 1.0 (HMAC-SHA1).

StringToSign = "POST&%2F&" + percent-encoded canonical query; Signature = Base64(HMAC-SHA1(
AccessKeySecret + "&", StringToSign)). The template named by ``template_code`` receives the
variables ``colour``, ``enterprise``, ``detail``, ``time`` and ``link``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

import httpx

from alerting.channels.base import OutMessage, check_http
from alerting.errors import ChannelError
from park.site import SmsAliyun

FLOW_CONTROL = ("isv.BUSINESS_LIMIT_CONTROL", "Throttling.User", "isv.DAY_LIMIT_CONTROL")


def percent_encode(s: str) -> str:
    return quote(s, safe="~").replace("+", "%20").replace("*", "%2A")


def sign(params: Mapping[str, str], secret: str, method: str = "POST") -> str:
    canonical = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))
    to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical)}"
    return base64.b64encode(hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()).decode()


class AliyunSms:
    name = "sms"

    def __init__(self, cfg: SmsAliyun, client: httpx.AsyncClient) -> None:
        self.cfg = cfg
        self.client = client

    def params(self, msg: OutMessage, now: datetime | None = None) -> dict[str, str]:
        a = msg.alarm
        template = {"colour": str(a.get("colour", "")), "enterprise": str(a.get("enterprise_name", ""))[:35],
                    "detail": str(a.get("message", ""))[:35], "time": str(a.get("time", "")),
                    "link": str(a.get("link", ""))}
        p = {
            "AccessKeyId": self.cfg.access_key_id, "Action": "SendSms", "Format": "JSON",
            "PhoneNumbers": msg.address, "RegionId": self.cfg.region_id, "SignName": self.cfg.sign_name,
            "SignatureMethod": "HMAC-SHA1", "SignatureNonce": uuid.uuid4().hex, "SignatureVersion": "1.0",
            "TemplateCode": self.cfg.template_code, "TemplateParam": json.dumps(template, ensure_ascii=False),
            "Timestamp": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"), "Version": "2017-05-25",
            "OutId": msg.key[:64],
        }
        p["Signature"] = sign(p, self.cfg.access_key_secret.get_secret_value())
        return p

    async def send(self, msg: OutMessage) -> str:
        try:
            r = await self.client.post(self.cfg.endpoint.rstrip("/") + "/", data=self.params(msg),
                                       timeout=self.cfg.timeout.total_seconds())
        except httpx.HTTPError as e:
            raise ChannelError(self.name, f"{type(e).__name__}: {e}") from e
        if r.status_code >= 500 or r.status_code == 429:
            check_http(self.name, r)
        data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        code = data.get("Code")
        if code == "OK":
            return f"BizId {data.get('BizId', '')}"
        if code in FLOW_CONTROL:
            raise ChannelError(self.name, f"aliyun {code}", retry_after=60, rate_limited=True)
        check_http(self.name, r)
        raise ChannelError(self.name, f"aliyun {code}: {data.get('Message')}", permanent=True)
