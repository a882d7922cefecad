"""Registry sync: the site file's tree and sensors into ``units``, ``hazard_sources``, ``sensors``.

Re-running with an edited file updates rows in place and never duplicates; sensors and units
that left the file are marked retired (their readings and alarms stay), and come back if they
return.
"""

from __future__ import annotations

import json

from psycopg import AsyncConnection

from park.model import Park, config_key, effective_limits
from park.site import Site


async def sync_registry(conn: AsyncConnection, site: Site) -> Park:
    """Upsert the registry from ``site`` in one transaction; return the park with registry ids."""
    units: list[tuple[str, str, str, str | None, str]] = []
    sources: list[tuple[str, str, str, int]] = []
    sensors: list[tuple[str, str, str, str, str, str | None, str | None, str, str, int]] = []
    shared: dict[tuple[object, ...], tuple[str, str, str | None, str, str]] = {}
    for d in site.districts:
        units.append((d.code, "district", d.name, None, "running"))
        for t in d.towns:
            units.append((t.code, "town", t.name, d.code, "running"))
            for e in t.enterprises:
                units.append((e.code, "enterprise", e.name, t.code, e.state.value))
                sources.extend((e.code, h.code, h.name, h.grade) for h in e.hazard_sources)
                for s in e.sensors:
                    key = config_key(s)
                    derived = shared.get(key)
                    if derived is None:  # once per distinct configuration: most sensors share one
                        lim = {k: v for k, v in effective_limits(s).items()}
                        cfg = s.model_dump(mode="json", exclude={"tag", "kind", "name", "unit", "gas",
                                                                 "hazard_source", "limits"}, exclude_none=True)
                        derived = shared[key] = (s.kind.value, s.unit or s.kind.default_unit, s.gas,
                                                 json.dumps(lim), json.dumps(cfg, ensure_ascii=False))
                    kind, unit, gas, lim_json, cfg_json = derived
                    sensors.append((e.code, s.tag, kind, unit, s.name or s.tag, s.hazard_source, gas,
                                    lim_json, cfg_json, len(sensors)))
    async with conn.transaction(), conn.cursor() as cur:
        # ON COMMIT DROP does not fire when the caller's transaction makes this one a savepoint
        await cur.execute("DROP TABLE IF EXISTS pg_temp._units, pg_temp._hs, pg_temp._sensors")
        await cur.execute("CREATE TEMP TABLE _units (code text, level text, name text, parent_code text,"
                          " state text) ON COMMIT DROP")
        async with cur.copy("COPY _units FROM STDIN") as cp:
            for u in units:
                await cp.write_row(u)
        await cur.execute(
            "INSERT INTO units (code, level, name, parent_code, state, file_state)"
            " SELECT code, level, name, parent_code, state, state FROM _units"
            " ON CONFLICT (code) DO UPDATE SET level = EXCLUDED.level, name = EXCLUDED.name,"
            "  parent_code = EXCLUDED.parent_code, retired_at = NULL, updated_at = now(),"
            # the file's state wins only when the file changed it; otherwise keep what the duty
            # room set through the API
            "  state = CASE WHEN units.file_state IS DISTINCT FROM EXCLUDED.file_state"
            "               THEN EXCLUDED.state ELSE units.state END,"
            "  file_state = EXCLUDED.file_state"
            " WHERE (units.level, units.name, units.parent_code, units.file_state, units.retired_at)"
            "   IS DISTINCT FROM (EXCLUDED.level, EXCLUDED.name, EXCLUDED.parent_code, EXCLUDED.file_state, NULL)"
        )
        await cur.execute("UPDATE units SET retired_at = now() WHERE retired_at IS NULL"
                          " AND code NOT IN (SELECT code FROM _units)")
        await cur.execute("CREATE TEMP TABLE _hs (enterprise_code text, code text, name text, grade smallint)"
                          " ON COMMIT DROP")
        async with cur.copy("COPY _hs FROM STDIN") as cp:
            for h in sources:
                await cp.write_row(h)
        await cur.execute(
            "INSERT INTO hazard_sources (enterprise_code, code, name, grade) SELECT * FROM _hs"
            " ON CONFLICT (enterprise_code, code) DO UPDATE SET name = EXCLUDED.name,"
            "  grade = EXCLUDED.grade, retired_at = NULL, updated_at = now()"
            " WHERE (hazard_sources.name, hazard_sources.grade, hazard_sources.retired_at)"
            "   IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.grade, NULL)"
        )
        await cur.execute("UPDATE hazard_sources h SET retired_at = now() WHERE retired_at IS NULL"
                          " AND NOT EXISTS (SELECT 1 FROM _hs x WHERE x.enterprise_code = h.enterprise_code"
                          " AND x.code = h.code)")
        await cur.execute(
            "CREATE TEMP TABLE _sensors (enterprise_code text, tag text, kind text, unit text, name text,"
            " hazard_source text, gas text, limits jsonb, config jsonb, n int) ON COMMIT DROP"
        )
        async with cur.copy("COPY _sensors FROM STDIN") as cp:
            for row in sensors:
                await cp.write_row(row)
        # start-up's peak memory with the national registry: the rows go before the park is built
        n_sensors = len(sensors)
        del sensors
        await cur.execute(
            "INSERT INTO sensors (enterprise_code, tag, kind, unit, name, hazard_source, gas, limits, config)"
            " SELECT enterprise_code, tag, kind, unit, name, hazard_source, gas, limits, config FROM _sensors"
            " ON CONFLICT (enterprise_code, tag) DO UPDATE SET kind = EXCLUDED.kind, unit = EXCLUDED.unit,"
            "  name = EXCLUDED.name, hazard_source = EXCLUDED.hazard_source, gas = EXCLUDED.gas,"
            "  limits = EXCLUDED.limits, config = EXCLUDED.config, retired_at = NULL, updated_at = now()"
            " WHERE (sensors.kind, sensors.unit, sensors.name, sensors.hazard_source, sensors.gas,"
            "        sensors.limits, sensors.config, sensors.retired_at)"
            "   IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.unit, EXCLUDED.name, EXCLUDED.hazard_source,"
            "        EXCLUDED.gas, EXCLUDED.limits, EXCLUDED.config, NULL)"
        )
        await cur.execute("UPDATE sensors s SET retired_at = now() WHERE retired_at IS NULL"
                          " AND NOT EXISTS (SELECT 1 FROM _sensors x WHERE x.enterprise_code = s.enterprise_code"
                          " AND x.tag = s.tag)")
        # the registry ids as one array in the file's order: no (enterprise, tag) key per sensor is fetched
        await cur.execute("SELECT coalesce(array_agg(s.id ORDER BY x.n), '{}') FROM sensors s"
                          " JOIN _sensors x USING (enterprise_code, tag)")
        got = await cur.fetchone()
        ids: list[int] = got[0] if got else []
    assert len(ids) == n_sensors  # (enterprise, tag) is unique in the file and in the table
    return Park.from_site(site, ids)
