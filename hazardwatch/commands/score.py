"""``hazardwatch score``: incidents detected, lead time over plain HH, nuisance alarms per hour.

Offline (default): simulates the park straight into the rule engine on simulated time.
``--truth FILE`` with a database: scores a real run's ``alarms`` table against the ground truth
that ``hazardwatch simulate`` wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timedelta

from park.durations import parse_duration
from park.errors import HazardwatchError
from park.model import Park
from park.settings import load_settings
from park.site import Site
from park.sitefile import load_site, parse_site
from simulators.park import SCENARIOS, Incident, site_yaml
from simulators.score import AlarmRecord, offline_run, score


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score detection against simulator ground truth (ISA-18.2 rates)")
    p.add_argument("--config", help="site file (default: the bundled demo park)")
    p.add_argument("--hours", type=float, default=24.0, help="simulated hours (offline)")
    p.add_argument("--scenario-every", default="1h", help="how often an incident starts (offline)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--truth", help="ground-truth JSON of a real run (hazardwatch simulate --truth-out)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.config) if args.config else parse_site(site_yaml(args.seed), environ={})
    except HazardwatchError as e:
        print(f"✗ {e}", file=sys.stderr)
        return 1
    if args.truth:
        return _score_real(args, site)
    park = Park.from_site(site)
    every = parse_duration(args.scenario_every)
    print(f"simulating {args.hours:g} h of {site.site.name} ({len(park.sensors)} sensors), an incident every "
          f"{args.scenario_every} from: {', '.join(SCENARIOS)}", flush=True)
    result = offline_run(park, hours=args.hours, seed=args.seed, scenario_every=every, progress=True)
    print(result.table())
    return 0 if all(s.detected for s in result.incidents) else 1


def _score_real(args: argparse.Namespace, site: Site) -> int:
    import psycopg

    settings = load_settings(site)
    if settings.database_url is None:
        print("✗ --truth needs the run's database: set HAZARDWATCH_DATABASE_URL", file=sys.stderr)
        return 1
    with open(args.truth, encoding="utf-8") as f:
        doc = json.load(f)
    incidents = [Incident(d["scenario"], d["enterprise"], tuple(d["tags"]), tuple(d["expected_rules"]),
                          datetime.fromisoformat(d["start"]), datetime.fromisoformat(d["end"]),
                          datetime.fromisoformat(d["hh_at"]) if d.get("hh_at") else None) for d in doc["incidents"]]
    start, end = datetime.fromisoformat(doc["start"]), datetime.fromisoformat(doc["end"])

    async def fetch() -> list[AlarmRecord]:
        assert settings.database_url is not None
        async with await psycopg.AsyncConnection.connect(settings.database_url.get_secret_value()) as conn:
            cur = await conn.execute("SELECT enterprise_code, tag, rule, severity, raised_at FROM alarms"
                                     " WHERE raised_at BETWEEN %s AND %s ORDER BY raised_at", (start, end))
            return [AlarmRecord(*r) for r in await cur.fetchall()]

    alarms = asyncio.run(fetch())
    result = score(incidents, alarms, max((end - start) / timedelta(hours=1), 1e-9))
    print(result.table())
    return 0 if all(s.detected for s in result.incidents) else 1
