"""Tencent Cloud (腾讯云) SMS SendSms, API 2021-01-11, signed with TC3-HMAC-SHA256.

The template named by ``template_id`` receives, in order: colour, enterprise, detail, time, link.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from alerting.channels.base import OutMessage, check_http
from alerting.errors import ChannelError
from park.site import SmsTencent

SERVICE = "sms"
VERSION = "2021-01-11"
LIMITED = ("LimitExceeded", "RequestLimitExceeded")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def authorization(secret_id: str, secret_key: str, host: str, payload: bytes, ts: int) -> str:
    date = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
    canonical = ("POST\n/\n\ncontent-type:application/json; charset=utf-8\n"
                 f"host:{host}\n\ncontent-type;host\n{hashlib.sha256(payload).hexdigest()}")
    scope = f"{date}/{SERVICE}/tc3_request"
    to_sign = f"TC3-HMAC-SHA256\n{ts}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _hmac(_hmac(_hmac(f"TC3{secret_key}".encode(), date), SERVICE), "tc3_request")
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"TC3-HMAC-SHA256 Credential={secret_id}/{scope}, SignedHeaders=content-type;host, Signature={sig}"


class TencentSms:
    name = "sms"

    def __init__(self, cfg: SmsTencent, client: httpx.AsyncClient) -> None:
        self.cfg = cfg
        self.client = client

    def request(self, msg: OutMessage, now: datetime | None = None) -> tuple[dict[str, str], bytes]:
        a = msg.alarm
        phone = msg.address if msg.address.startswith("+") else f"+86{msg.address}"
        body = json.dumps({
            "PhoneNumberSet": [phone], "SmsSdkAppId": self.cfg.sdk_app_id, "SignName": self.cfg.sign_name,
            "TemplateId": self.cfg.template_id, "SessionContext": msg.key[:512],
            "TemplateParamSet": [str(a.get("colour", "")), str(a.get("enterprise_name", ""))[:20],
                                 str(a.get("message", ""))[:20], str(a.get("time", "")), str(a.get("link", ""))],
        }, ensure_ascii=False).encode()
        ts = int((now or datetime.now(UTC)).timestamp())
        host = urlsplit(self.cfg.endpoint).netloc
        headers = {
            "Authorization": authorization(self.cfg.secret_id, self.cfg.secret_key.get_secret_value(), host, body, ts),
            "Content-Type": "application/json; charset=utf-8", "Host": host, "X-TC-Action": "SendSms",
            "X-TC-Timestamp": str(ts), "X-TC-Version": VERSION, "X-TC-Region": self.cfg.region,
        }
        return headers, body

    async def send(self, msg: OutMessage) -> str:
        headers, body = self.request(msg)
        try:
            r = await self.client.post(self.cfg.endpoint, content=body, headers=headers,
                                       timeout=self.cfg.timeout.total_seconds())
        except httpx.HTTPError as e:
            raise ChannelError(self.name, f"{type(e).__name__}: {e}") from e
        check_http(self.name, r)
        resp = r.json().get("Response", {})
        if "Error" in resp:
            code = resp["Error"].get("Code", "")
            raise ChannelError(self.name, f"tencent {code}: {resp['Error'].get('Message')}",
                               retry_after=60 if code in LIMITED else None, permanent=code not in LIMITED,
                               rate_limited=code in LIMITED)
        status = (resp.get("SendStatusSet") or [{}])[0]
        if status.get("Code") == "Ok":
            return f"SerialNo {status.get('SerialNo', '')}"
        code = status.get("Code", "")
        raise ChannelError(self.name, f"tencent {code}: {status.get('Message')}",
                           retry_after=60 if "Limit" in code else None, permanent="Limit" not in code)
