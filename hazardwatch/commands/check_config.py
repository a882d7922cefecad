"""``hazardwatch check-config SITE.yaml``: validate a site file, print a summary or the refusals."""

from __future__ import annotations

import argparse
import sys

from park.errors import HazardwatchError, SiteFileError
from park.model import Park
from park.settings import load_settings
from park.sitefile import load_site
from park.types import Severity


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="validate a site file (exit 0 valid, 1 refused)")
    p.add_argument("site", help="site file (YAML)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.site)
    except SiteFileError as e:
        print(f"✗ {e.file}: 配置文件被拒绝 refused — {len(e.problems)} problem(s)", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    park = Park.from_site(site)
    print(f"✓ {args.site}: {site.site.name} — valid")
    c = park.counts()
    print(
        f"  {c['districts']} districts · {c['towns']} towns · {c['enterprises']} enterprises · "
        f"{c['hazard_sources']} hazard sources · {c['sensors']} sensors"
    )
    print("  sensors by kind: " + ", ".join(f"{k} {n}" for k, n in park.kinds().items()))
    for d in site.districts:
        ents = sum(len(t.enterprises) for t in d.towns)
        sens = sum(len(e.sensors) for t in d.towns for e in t.enterprises)
        print(f"  {d.code} {d.name}: {len(d.towns)} towns, {ents} enterprises, {sens} sensors")
    for sev in Severity.by_rank():
        pol = site.escalation[sev]
        steps = " → ".join(f"{s.level} after {int(s.after.total_seconds() // 60)}m" for s in pol.then)
        rep = f", repeat every {int(pol.repeat_every.total_seconds() // 60)}m" if pol.repeat_every else ""
        print(f"  {sev.value:<6} {sev.zh}: {'+'.join(pol.immediate)} at once"
              + (f" → {steps}" if steps else "") + rep)
    try:
        s = load_settings(site)
        print("  connections: " + ", ".join(f"{k}={v}" for k, v in s.safe_dict().items()))
    except HazardwatchError as e:
        print(f"✗ settings: {e}", file=sys.stderr)
        return 1
    return 0
