"""Each channel against a local server that checks the request as the vendor would, and injects faults."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import urllib.parse
from datetime import timedelta
from typing import Any

import httpx
import pytest

from alerting.channels.base import OutMessage
from alerting.channels.sms_aliyun import AliyunSms
from alerting.channels.sms_http import HttpSms
from alerting.channels.sms_tencent import TencentSms
from alerting.channels.webhook import Webhook
from alerting.channels.wecom_app import WecomApp
from alerting.channels.wecom_robot import WecomRobot
from alerting.errors import ChannelError
from park.site import SmsAliyun, SmsHttp, SmsTencent, WebhookChannel, WecomChannel
from tests.alerting_helpers import VendorServer, sms_gateway, wecom_robot

MSG = OutMessage(key="7/E001/张工/sms/immediate", contact="张工", address="13800000003", title="【红色预警】",
                 text="【红色预警·重大】某某化工\n苯 25 mg/m3\n确认：http://x/ack/t", markdown="**红色预警**",
                 alarm={"colour": "红色", "enterprise_name": "某某化工有限公司", "message": "苯 25 mg/m3",
                        "time": "2026-11-23 16:00:00", "link": "http://x/ack/t"})


def send(ch: Any, msg: OutMessage = MSG) -> str:
    async def go() -> str:
        async with httpx.AsyncClient() as c:
            ch.client = c
            return await ch.send(msg)  # type: ignore[no-any-return]
    return asyncio.run(go())


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Any:
    srv = VendorServer(request.param)
    yield srv
    srv.close()


@pytest.mark.parametrize("server", [sms_gateway], indirect=True)
def test_http_sms_sends_the_contract_body_and_classifies_failures(server: VendorServer) -> None:
    ch = HttpSms(SmsHttp(provider="http", url=server.url + "/send", token="tok"), None)  # type: ignore[arg-type]
    assert send(ch).startswith("HTTP 200")
    req = server.ok()[0]
    assert json.loads(req["body"]) == {"phone": "13800000003", "text": MSG.text, "id": MSG.key}
    assert req["headers"]["authorization"] == "Bearer tok"
    server.faults += ["503"]
    with pytest.raises(ChannelError) as e:
        send(ch)
    assert not e.value.permanent and e.value.retry_after == 1
    server.faults += ["429"]
    with pytest.raises(ChannelError) as e:
        send(ch)
    assert e.value.retry_after == 1
    with pytest.raises(ChannelError) as e:
        send(ch, OutMessage(MSG.key, MSG.contact, "x1", MSG.title, MSG.text, MSG.markdown, MSG.alarm))
    assert e.value.permanent  # 400 from the gateway: retrying cannot help


@pytest.mark.parametrize("server", [sms_gateway], indirect=True)
def test_slow_gateway_times_out_as_retryable(server: VendorServer) -> None:
    ch = HttpSms(SmsHttp(provider="http", url=server.url + "/send", timeout=timedelta(seconds=1)), None)  # type: ignore[arg-type]
    server.faults.append("slow")
    with pytest.raises(ChannelError) as e:
        send(ch)
    assert "Timeout" in str(e.value) and not e.value.permanent


@pytest.mark.parametrize("server", [wecom_robot], indirect=True)
def test_wecom_robot_markdown_rate_limit_and_45009(server: VendorServer) -> None:
    ch = WecomRobot(WecomChannel(base_url=server.url, robot_per_minute=3), None)  # type: ignore[arg-type]
    robot = OutMessage(MSG.key, "群机器人", "robot-key-1", MSG.title, MSG.text, MSG.markdown, MSG.alarm)

    async def go() -> list[str]:
        out = []
        async with httpx.AsyncClient() as c:
            ch.client = c
            for _ in range(4):
                try:
                    out.append(await ch.send(robot))
                except ChannelError as e:
                    out.append(f"limited {e.retry_after is not None}")
        return out

    assert asyncio.run(go()) == ["errcode 0"] * 3 + ["limited True"]  # our own window keeps under WeCom's
    req = server.ok()[0]
    assert req["query"] == {"key": "robot-key-1"}
    assert json.loads(req["body"]) == {"msgtype": "markdown", "markdown": {"content": MSG.markdown}}
    ch2 = WecomRobot(WecomChannel(base_url=server.url), None)  # type: ignore[arg-type]
    server.faults.append("45009")
    with pytest.raises(ChannelError) as e:
        send(ch2, robot)
    assert e.value.retry_after == 60


def aliyun_gateway(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
                   fault: str | None) -> tuple[int, Any, dict[str, str]]:
    """Verifies an Aliyun RPC v1 signature the way the vendor documents it, independently of our signer."""
    params = dict(urllib.parse.parse_qsl(body.decode()))
    sig = params.pop("Signature", "")

    def enc(s: str) -> str:
        return urllib.parse.quote(s, safe="-_.~")

    canon = "&".join(f"{enc(k)}={enc(params[k])}" for k in sorted(params))
    sts = "POST&%2F&" + enc(canon)
    want = base64.b64encode(hmac.new(b"s3cret&", sts.encode(), hashlib.sha1).digest()).decode()
    if sig != want:
        return 400, {"Code": "SignatureDoesNotMatch", "Message": "Specified signature is not matched"}, {}
    for k in ("AccessKeyId", "Action", "PhoneNumbers", "SignName", "TemplateCode", "TemplateParam", "Timestamp",
              "SignatureNonce", "Version"):
        if not params.get(k):
            return 400, {"Code": "MissingParameter", "Message": k}, {}
    if fault == "limit":
        return 200, {"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "触发流控"}, {}
    return 200, {"Code": "OK", "BizId": "900619746936498440^0", "Message": "OK"}, {}


@pytest.mark.parametrize("server", [aliyun_gateway], indirect=True)
def test_aliyun_sendsms_signature_and_flow_control(server: VendorServer) -> None:
    cfg = SmsAliyun(provider="aliyun", access_key_id="AK", access_key_secret="s3cret", sign_name="园区",
                    template_code="SMS_1", endpoint=server.url)
    assert send(AliyunSms(cfg, None)).startswith("BizId")  # type: ignore[arg-type]
    params = dict(urllib.parse.parse_qsl(server.ok()[0]["body"].decode()))
    assert json.loads(params["TemplateParam"])["enterprise"] == "某某化工有限公司"
    server.faults.append("limit")
    with pytest.raises(ChannelError) as e:
        send(AliyunSms(cfg, None))  # type: ignore[arg-type]
    assert e.value.retry_after == 60
    wrong = SmsAliyun(**{**cfg.model_dump(), "access_key_secret": "other"})
    with pytest.raises(ChannelError, match="SignatureDoesNotMatch"):
        send(AliyunSms(wrong, None))  # type: ignore[arg-type]


def tencent_gateway(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
                    fault: str | None) -> tuple[int, Any, dict[str, str]]:
    """Verifies TC3-HMAC-SHA256 as Tencent Cloud documents it, independently of our signer."""
    ts = int(headers["x-tc-timestamp"])
    import datetime as dt

    date = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")
    host = headers["host"]
    creq = "\n".join(["POST", "/", "", f"content-type:{headers['content-type']}", f"host:{host}", "",
                      "content-type;host", hashlib.sha256(body).hexdigest()])
    sts = "\n".join(["TC3-HMAC-SHA256", str(ts), f"{date}/sms/tc3_request",
                     hashlib.sha256(creq.encode()).hexdigest()])
    k = hmac.new(("TC3" + "tkey").encode(), date.encode(), hashlib.sha256).digest()
    k = hmac.new(k, b"sms", hashlib.sha256).digest()
    k = hmac.new(k, b"tc3_request", hashlib.sha256).digest()
    want = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    auth = headers.get("authorization", "")
    if f"Signature={want}" not in auth or "Credential=TID/" not in auth or headers.get("x-tc-action") != "SendSms":
        return 200, {"Response": {"Error": {"Code": "AuthFailure.SignatureFailure", "Message": "bad"}}}, {}
    doc = json.loads(body)
    if doc["PhoneNumberSet"] != ["+8613800000003"] or len(doc["TemplateParamSet"]) != 5:
        return 200, {"Response": {"Error": {"Code": "InvalidParameter", "Message": "bad"}}}, {}
    return 200, {"Response": {"SendStatusSet": [{"Code": "Ok", "SerialNo": "2640:1"}], "RequestId": "r"}}, {}


@pytest.mark.parametrize("server", [tencent_gateway], indirect=True)
def test_tencent_sendsms_tc3_signature(server: VendorServer) -> None:
    cfg = SmsTencent(provider="tencent", secret_id="TID", secret_key="tkey", sdk_app_id="1400", sign_name="园区",
                     template_id="123", endpoint=server.url)
    assert send(TencentSms(cfg, None)) == "SerialNo 2640:1"  # type: ignore[arg-type]
    wrong = SmsTencent(**{**cfg.model_dump(), "secret_key": "nope"})
    with pytest.raises(ChannelError, match="SignatureFailure"):
        send(TencentSms(wrong, None))  # type: ignore[arg-type]


def webhook_receiver(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
                     fault: str | None) -> tuple[int, Any, dict[str, str]]:
    want = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
    if headers.get("x-hazardwatch-signature") != want:
        return 401, {"error": "bad signature"}, {}
    return 202, {"accepted": True}, {}


@pytest.mark.parametrize("server", [webhook_receiver], indirect=True)
def test_webhook_is_signed(server: VendorServer) -> None:
    ch = Webhook(WebhookChannel(url=server.url + "/hook", secret="hook-secret"), None)  # type: ignore[arg-type]
    assert send(ch) == "HTTP 202"
    doc = json.loads(server.requests[0]["body"])
    assert doc["id"] == MSG.key and doc["alarm"]["colour"] == "红色"
    assert urllib.parse.unquote(server.requests[0]["headers"]["idempotency-key"]) == MSG.key


def wecom_app_server() -> Any:
    state = {"tokens": 0}

    def handler(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
                fault: str | None) -> tuple[int, Any, dict[str, str]]:
        if path == "/cgi-bin/gettoken":
            if query != {"corpid": "ww1", "corpsecret": "sec"}:
                return 200, {"errcode": 40013, "errmsg": "invalid corpid"}, {}
            state["tokens"] += 1
            return 200, {"errcode": 0, "access_token": f"T{state['tokens']}", "expires_in": 7200}, {}
        if path == "/cgi-bin/message/send":
            if query.get("access_token") != f"T{state['tokens']}" or fault == "expired":
                return 200, {"errcode": 42001, "errmsg": "access_token expired"}, {}
            doc = json.loads(body)
            assert doc["touser"] == "zhanggong" and doc["agentid"] == 1000002
            return 200, {"errcode": 0, "errmsg": "ok", "msgid": "m1"}, {}
        return 404, {}, {}

    return handler, state


def test_wecom_app_caches_and_refreshes_the_token() -> None:
    handler, state = wecom_app_server()
    srv = VendorServer(handler)
    try:
        cfg = WecomChannel(base_url=srv.url, corp_id="ww1", agent_id=1000002, secret="sec")
        ch = WecomApp(cfg, None)  # type: ignore[arg-type]
        person = OutMessage(MSG.key, "张工", "zhanggong", MSG.title, MSG.text, MSG.markdown, MSG.alarm)

        async def go() -> list[str]:
            async with httpx.AsyncClient() as c:
                ch.client = c
                a = await ch.send(person)
                b = await ch.send(person)  # cached token
                srv.faults.append("expired")
                cc = await ch.send(person)  # refreshed after 42001
                return [a, b, cc]

        assert asyncio.run(go()) == ["msgid m1"] * 3
        assert state["tokens"] == 2
    finally:
        srv.close()
