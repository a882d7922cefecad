"""Text at a glance (issue 15): the SMS and WeCom texts a contact actually receives, and the board's
text for the same alarm, give values rounded to the sensor's precision with their unit — the kind's
default (combustible gas: 1 decimal) or the site file's own ``precision:`` — never "32.33 %LEL"."""

from __future__ import annotations

import asyncio
import json

from park.clock import FakeClock
from park.sitefile import parse_site
from tests.ingest_helpers import Publisher
from tests.service_helpers import StandIns, running_service, token_for
from tests.test_service_e2e import T0, until


def _texts(stand_ins: StandIns, tag: str) -> tuple[list[str], list[str]]:
    sms = [json.loads(r["body"])["text"] for r in stand_ins.sms.ok()]
    wecom = [json.loads(r["body"])["markdown"]["content"] for r in stand_ins.robot.ok()]
    return [t for t in sms if tag in t], [t for t in wecom if tag in t]


def test_sms_wecom_and_board_round_values_to_the_sensors_precision(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                                    topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hww2")
    text = stand_ins.text.replace(
        "              - {tag: AT-2, kind: gas_toxic, gas: Cl2, name: 液氯间氯气}",
        "              - {tag: AT-2, kind: gas_toxic, gas: Cl2, name: 液氯间氯气}\n"
        "              - {tag: TT-1, kind: temperature, unit: degC, name: 反应釜温度, limits: {h: 80, hh: 90},"
        " precision: 0}")
    site = parse_site(text, environ={})
    clock = FakeClock(T0)

    async def go() -> None:
        async with running_service(site, db, mqtt_url, topic_prefix, clock) as (h, client):
            pub = Publisher(mqtt_url)
            ms = int(T0.timestamp() * 1000)
            pub.publish(f"{topic_prefix}/E1/data", json.dumps({"ts": ms, "points": [
                {"tag": "AT-1", "value": 32.3333}, {"tag": "TT-1", "value": 85.6}]}))
            await until(lambda: all(len(x) >= 1 for x in _texts(stand_ins, "AT-1")))
            await until(lambda: all(len(x) >= 1 for x in _texts(stand_ins, "TT-1")))
            (gas_sms, *_), (gas_md, *_) = _texts(stand_ins, "AT-1")
            (tt_sms, *_), (tt_md, *_) = _texts(stand_ins, "TT-1")
            for t in (gas_sms, gas_md):
                assert "32.3 %LEL" in t and "限值 25.0 %LEL" in t and "32.33" not in t, t
            for t in (tt_sms, tt_md):  # the site file's own precision: whole degrees
                assert "86°C" in t and "限值 80°C" in t and "85.6" not in t and "degC" not in t, t
            park = await token_for(h, "park")
            alarms = {a["tag"]: a for a in (await client.get("/api/v1/alarms", headers=park)).json()}
            assert alarms["AT-1"]["value_text"] == "32.3 %LEL" and "32.33" not in alarms["AT-1"]["text"]
            assert alarms["TT-1"]["value_text"] == "86°C" and "85.6" not in alarms["TT-1"]["text"]
            assert "32.3 %LEL" in alarms["AT-1"]["message"] and "86°C" in alarms["TT-1"]["message"]
            pub.close()

    asyncio.run(go())
