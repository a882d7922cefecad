"""Per-gateway clock skew is visible (issue 12): the rule stage keeps each gateway's measured offset
in the database, and the API shows it per enterprise and on the map, on whichever instance answers."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg

from park.clock import FakeClock
from park.types import GatewayClock
from tests.service_helpers import StandIns, running_service, token_for
from tests.test_service_e2e import T0, until


def test_gateway_clock_offsets_are_kept_and_shown_per_enterprise(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                                  topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hww2")
    clock = FakeClock(T0)

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, clock) as (h, client):
            auth = await token_for(h, "park")
            # what ingest's estimator reports: E2 ten minutes slow, E1 three seconds fast
            await h.rules.inbox.put(GatewayClock("E2", -600.0, T0))
            await h.rules.inbox.put(GatewayClock("E1", 3.0, T0))
            await until(lambda: {"E1", "E2"} <= set(h.rules.engine.gateway_clocks))
            assert await h.rules.save_clocks() is True
            async with await psycopg.AsyncConnection.connect(db) as conn:
                cur = await conn.execute("SELECT enterprise_code, offset_s, measured_at FROM gateway_clocks ORDER BY 1")
                assert await cur.fetchall() == [("E1", 3.0, T0), ("E2", -600.0, T0)]
            ents = {e["code"]: e for e in (await client.get("/api/v1/enterprises", headers=auth)).json()}
            assert (ents["E2"]["clock_offset_s"], ents["E2"]["clock_wrong"], ents["E2"]["clock_skew_max_s"]) == (
                -600.0, True, 120.0)
            assert (ents["E1"]["clock_offset_s"], ents["E1"]["clock_wrong"]) == (3.0, False)
            assert ents["E2"]["clock_measured_at"].startswith(T0.isoformat()[:19])
            on_map = {e["code"]: e for e in (await client.get("/api/v1/map", headers=auth)).json()["enterprises"]}
            assert (on_map["E2"]["clock_offset_s"], on_map["E2"]["clock_wrong"]) == (-600.0, True)
            assert on_map["E1"]["clock_wrong"] is False
            # a newer measurement replaces it
            await h.rules.inbox.put(GatewayClock("E2", -1.0, T0 + timedelta(minutes=1)))
            await until(lambda: h.rules.engine.gateway_clocks["E2"][0] == -1.0)
            await h.rules.save_clocks()
            ents = {e["code"]: e for e in (await client.get("/api/v1/enterprises", headers=auth)).json()}
            assert (ents["E2"]["clock_offset_s"], ents["E2"]["clock_wrong"]) == (-1.0, False)

    asyncio.run(go())
