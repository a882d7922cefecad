"""Start-up with a national registry (issue 16): what is shared between sensors stays right.

Start-up with 440,000 registered sensors derives each sensor's settings once per distinct
configuration, not once per sensor, and walks only the parts of the site file that can hold a
secret. These tests pin that the shortcuts change no result: every sensor keeps its own tag,
name, hazard source and limits, and every secret is still found.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import tempfile
import typing

import psycopg
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, SecretStr

from hazardwatch.service import run_service
from park import settings as settings_module
from park import site as site_module
from park.db.migrate import migrate
from park.db.registry import sync_registry
from park.model import Park, _spec
from park.proc import pause_collector, settle
from park.redact import secret_fields, secret_values
from park.site import Sensor, Site
from park.sitefile import load_site, parse_site
from tests.service_helpers import launched, service_settings
from tests.site_helpers import MINIMAL_SITE, variant

# sensors that share a configuration but not their identity, and sensors one setting apart
SHARED = variant(
    "              - {tag: AT-2002, kind: gas_combustible, unit: \"%LEL\"}\n",
    "              - {tag: AT-2002, kind: gas_combustible, unit: \"%LEL\"}\n"
    "              - {tag: AT-2003, kind: gas_combustible, unit: \"%LEL\", name: 二号可燃, hazard_source: HS01}\n"
    "              - {tag: AT-2004, kind: gas_combustible, unit: \"%LEL\", limits: {h: 20, hh: 40}}\n"
    "              - {tag: AT-2005, kind: gas_toxic, gas: NH3, unit: mg/m3}\n"
    "              - {tag: AT-2006, kind: gas_toxic, gas: H2S, unit: ppm}\n"
    "              - {tag: AT-2007, kind: gas_combustible, unit: \"%LEL\", trend: {enabled: false}}\n"
    "              - {tag: AT-2008, kind: gas_combustible, unit: \"%LEL\", interval: 10s, precision: 1}\n"
    "              - {tag: LT-1002, kind: tank_level, unit: m, hazard_source: HS01,\n"
    "                 name: T-102 液位, limits: {hh: 9.0, h: 8.5, l: 1.0, ll: 0.5}}\n"
    "              - {tag: LT-1003, kind: tank_level, unit: m, limits: {hh: 7.0, h: 6.5}}\n",
)


def test_sensors_sharing_a_configuration_keep_their_own_identity_and_settings() -> None:
    site = parse_site(SHARED, environ={})
    park = Park.from_site(site)
    grades = {h.code: h.grade for h in site.districts[0].towns[0].enterprises[0].hazard_sources}
    sensors = site.districts[0].towns[0].enterprises[0].sensors
    assert len(park.sensors) == len(sensors) == 11
    for spec, s in zip(park.sensors, sensors, strict=True):
        alone = _spec(spec.id, s, "E001", "LJ", "HM", grades)  # derived for this sensor alone
        assert spec == alone, s.tag
    by_tag = {s.tag: s for s in park.sensors}
    assert by_tag["AT-2003"].name == "二号可燃" and by_tag["AT-2003"].hazard_source == "HS01"
    assert by_tag["AT-2003"].hazard_grade == 2 and by_tag["AT-2002"].hazard_source is None
    assert (by_tag["AT-2002"].limits.h, by_tag["AT-2004"].limits.h) == (25.0, 20)
    assert by_tag["AT-2001"].limits != by_tag["AT-2006"].limits  # mg/m3 and ppm
    assert by_tag["AT-2007"].trend_horizon is None and by_tag["AT-2002"].trend_horizon is not None
    assert by_tag["AT-2008"].precision == 1 and by_tag["AT-2008"].interval.total_seconds() == 10
    assert by_tag["LT-1003"].limits.hh == 7.0 and by_tag["LT-1002"].name == "T-102 液位"


def test_registry_rows_carry_each_sensors_own_limits_and_config(db_url: str) -> None:
    site = parse_site(SHARED, environ={})

    async def go() -> list[tuple[str, str, str | None, dict[str, float], dict[str, object]]]:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await migrate(conn)
            await sync_registry(conn, site)
            cur = await conn.execute("SELECT tag, name, hazard_source, limits, config FROM sensors ORDER BY tag")
            return list(await cur.fetchall())

    rows = {r[0]: r[1:] for r in asyncio.run(go())}
    assert len(rows) == 11
    assert rows["AT-2003"][:2] == ("二号可燃", "HS01") and rows["AT-2002"][:2] == ("AT-2002", None)
    assert rows["AT-2002"][2] == {"h": 25.0, "hh": 50.0} and rows["AT-2004"][2] == {"h": 20.0, "hh": 40.0}
    assert rows["AT-2005"][2] != rows["AT-2001"][2] != rows["AT-2006"][2]
    assert rows["AT-2007"][3]["trend"]["enabled"] is False  # type: ignore[index]
    assert "trend" not in rows["AT-2002"][3] and rows["AT-2008"][3]["precision"] == 1
    assert rows["LT-1003"][2] == {"hh": 7.0, "h": 6.5} and rows["LT-1002"][:2] == ("T-102 液位", "HS01")


def _full_walk(obj: object) -> set[str]:
    """Every SecretStr, walking every field of every model: what secret_values must still find."""
    out: set[str] = set()
    if isinstance(obj, SecretStr):
        out.add(obj.get_secret_value())
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            out |= _full_walk(getattr(obj, name))
    elif isinstance(obj, dict):
        for v in obj.values():
            out |= _full_walk(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            out |= _full_walk(v)
    return out


def _mentions_secret(tp: object) -> bool:
    return tp is SecretStr or any(_mentions_secret(a) for a in typing.get_args(tp))


def test_every_field_that_can_hold_a_secret_is_walked() -> None:
    models = [m for mod in (site_module, settings_module) for m in vars(mod).values()
              if isinstance(m, type) and issubclass(m, BaseModel) and m is not BaseModel]
    assert len(models) > 20
    for m in models:
        for name, f in m.model_fields.items():
            if _mentions_secret(f.annotation):
                assert name in secret_fields(m), f"{m.__name__}.{name}"
    # the path from the top down to each secret is walked too
    assert {"districts", "channels"} <= set(secret_fields(Site))
    example = load_site("deploy/site.example.yaml", environ={"HW_SMS_TOKEN": "sms-token-from-env"})
    assert "sms-token-from-env" in secret_values(example) == _full_walk(example)
    robots = parse_site(MINIMAL_SITE.replace("            contacts: [{name: 张工",
                                             "            wecom_robot: {key: enterprise-robot-key}\n"
                                             "            contacts: [{name: 张工"), environ={})
    assert secret_values(robots) == _full_walk(robots) == {"district-robot-key", "enterprise-robot-key"}


def test_a_sensor_is_not_walked_for_secrets() -> None:
    # a national registry is 440,000 sensors: none of them can hold a secret, so none is visited
    assert secret_fields(Sensor) == ()


def test_start_up_objects_are_kept_apart_from_collection_once_running() -> None:
    frozen = gc.get_freeze_count()
    try:
        pause_collector()
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]  # start-up's long-lived objects
        settle()
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(made)
        settle()  # twice (the fallback timer and readiness) changes nothing
        assert gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_rule_rows_shared_between_sensors_follow_each_sensors_own_limits() -> None:
    from rules.engine import RuleEngine

    site = parse_site(SHARED.replace("{tag: AT-2007, kind: gas_combustible, unit: \"%LEL\", trend: {enabled: false}}",
                                     "{tag: AT-2007, kind: gas_combustible, unit: \"%LEL\", deadband: 0.7,"
                                     " on_delay: 30s}"), environ={})
    park = Park.from_site(site)
    th = RuleEngine(park).threshold
    for i, s in enumerate(park.sensors):
        for lvl, want in ((2, s.limits.hh), (1, s.limits.h), (-1, s.limits.l), (-2, s.limits.ll)):
            got = th.limit(i, lvl)
            assert (got != got and want is None) or got == want, (s.tag, lvl)
    by_tag = {s.tag: i for i, s in enumerate(park.sensors)}
    c2, c7 = th.cid[by_tag["AT-2002"]], th.cid[by_tag["AT-2007"]]
    assert c2 != c7 and th.c_db[c7] == 0.7 and th.c_on_delay[c7] == 30 and th.c_db[c2] != 0.7


def test_a_word_quoted_in_one_place_and_plain_in_another_keeps_both_readings() -> None:
    # scalars are resolved once per (text, quoting): quoted "2" is text, plain 2 a number
    site = parse_site(variant("- {code: HS01, name: 苯罐区, grade: 2}",
                              "- {code: HS01, grade: 2, name: \"2\"}\n              - {code: HS02, grade: 3, name: '3'}"
                              "\n              - {code: HS03, name: \"true\", grade: 1}"),
                      environ={})
    sources = site.districts[0].towns[0].enterprises[0].hazard_sources
    assert [(h.name, h.grade) for h in sources] == [("2", 2), ("3", 3), ("true", 1)]


def _without_sensor_lists(site: Site) -> dict[str, object]:
    return site.model_dump(exclude={"districts": {"__all__": {"towns": {"__all__": {"enterprises": {
        "__all__": {"sensors"}}}}}}})


def test_the_park_the_service_keeps_has_no_sensor_models_and_answers_the_same() -> None:
    site = parse_site(SHARED, environ={})
    full = Park.from_site(site)
    kept = full.without_sensor_models()
    assert not [s for _d, _t, e in kept.site.walk() for s in e.sensors]
    assert not [s for e in kept.enterprises.values() for s in e.sensors]
    # the compiled sensors and lookups are shared, not copied; the rest of the file is as it was
    assert kept.sensors is full.sensors and kept.by_key is full.by_key and kept.by_id is full.by_id
    assert kept.units is full.units and kept.counts() == full.counts() and kept.kinds() == full.kinds()
    assert _without_sensor_lists(kept.site) == _without_sensor_lists(site)
    assert {c: e.model_dump(exclude={"sensors"}) for c, e in kept.enterprises.items()} == \
        {c: e.model_dump(exclude={"sensors"}) for c, e in full.enterprises.items()}
    assert [e.code for _d, _t, e in kept.site.walk()] == list(kept.enterprises)
    assert all(kept.enterprises[e.code] is e for _d, _t, e in kept.site.walk())


def test_a_running_service_frees_the_sensor_models_its_caller_handed_over(
        make_database, mqtt_url: str, topic_prefix: str) -> None:  # type: ignore[no-untyped-def]
    # hazardwatch run hands the parsed site file over and keeps no reference: with a national registry
    # the per-sensor models are half the resident memory, and the service must not keep them alive
    db = make_database("timescaledb", "hwmem")
    marked = SHARED.replace("AT-2008", "MEMTEST-1")

    def models() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is Sensor and o.tag == "MEMTEST-1")

    async def go() -> tuple[int, int]:
        data_dir = tempfile.mkdtemp(prefix="hw-data-")
        handed = [parse_site(marked, environ={})]
        settings = service_settings(handed[0], db, mqtt_url, topic_prefix, data_dir, client="mem")
        before = models()
        try:
            async with launched(lambda on_ready: run_service(settings, handed.pop(), registry=CollectorRegistry(),
                                                             on_ready=on_ready)) as (handle, _task):
                assert handle.park.sensor("E001", "MEMTEST-1") is not None
                return before, models()
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

    before, running = asyncio.run(go())
    assert (before, running) == (1, 0)


def test_registry_ids_follow_each_sensor_when_the_file_order_and_the_id_order_differ(db_url: str) -> None:
    # ids come back as one array in file order: a sensor added at the top of an enterprise on a second
    # sync gets the newest id while sitting first in the file
    first = parse_site(SHARED, environ={})
    added = parse_site(SHARED.replace(
        "              - {tag: AT-2002, kind: gas_combustible, unit: \"%LEL\"}\n",
        "              - {tag: AT-0001, kind: gas_combustible, unit: \"%LEL\"}\n"
        "              - {tag: AT-2002, kind: gas_combustible, unit: \"%LEL\"}\n", 1), environ={})

    async def go() -> tuple[Park, Park, dict[str, int]]:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await migrate(conn)
            p1 = await sync_registry(conn, first)
            p2 = await sync_registry(conn, added)
            cur = await conn.execute("SELECT tag, id FROM sensors")
            return p1, p2, {r[0]: r[1] for r in await cur.fetchall()}

    p1, p2, rows = asyncio.run(go())
    assert [s.tag for s in p2.sensors].index("AT-0001") < [s.tag for s in p2.sensors].index("AT-2002")
    assert {s.tag: s.id for s in p2.sensors} == rows and len(rows) == 12
    assert {s.tag: s.id for s in p1.sensors} == {t: i for t, i in rows.items() if t != "AT-0001"}
    assert p2.by_id[rows["AT-0001"]].tag == "AT-0001" and rows["AT-0001"] == max(rows.values())
