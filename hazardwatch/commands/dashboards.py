"""``hazardwatch dashboards push|export``: the Grafana wall-screen dashboards."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboards", help="Grafana dashboards for the duty room's wall screens")
    dsub = p.add_subparsers(dest="dash_command", required=True, metavar="ACTION")
    e = dsub.add_parser("export", help="write the dashboards as JSON files (for file provisioning)")
    e.add_argument("--out", default="dashboards-json", help="folder to write into")
    e.set_defaults(func=export)
    push = dsub.add_parser("push", help="create/update the folder, data source and dashboards in Grafana")
    push.add_argument("--grafana-url", default=os.environ.get("GRAFANA_URL", "http://admin:admin@127.0.0.1:3000"))
    push.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN"), help="API token (or user:pass in the URL)")
    push.add_argument("--with-datasource", action="store_true",
                      help="also create the PostgreSQL data source from HAZARDWATCH_DATABASE_URL")
    push.set_defaults(func=push_cmd)


def export(args: argparse.Namespace) -> int:
    from dashboards.build import all_dashboards

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for d in all_dashboards():
        path = out / f"{d['uid']}.json"
        path.write_text(json.dumps(d, ensure_ascii=False, indent=2), encoding="utf-8")
        print(f"✓ {path}")
    return 0


def push_cmd(args: argparse.Namespace) -> int:
    from grafana_client import GrafanaApi

    from dashboards.provision import datasource_body, provision

    api = GrafanaApi.from_url(args.grafana_url, credential=args.token)
    ds = None
    if args.with_datasource:
        url = os.environ.get("HAZARDWATCH_DATABASE_URL")
        if not url:
            print("✗ --with-datasource needs HAZARDWATCH_DATABASE_URL", file=sys.stderr)
            return 1
        u = urlsplit(url)
        ds = datasource_body("hazardwatch", f"{u.hostname}:{u.port or 5432}", u.path.lstrip("/"),
                             u.username or "postgres", u.password)
    try:
        for link in provision(api, ds):
            print(f"✓ {link}")
    except Exception as e:  # connection refused, 401 …: say so plainly
        print(f"✗ Grafana at {urlsplit(args.grafana_url).hostname}: {e}", file=sys.stderr)
        return 1
    return 0
