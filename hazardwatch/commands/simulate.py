"""``hazardwatch simulate``: publish a simulated park through the contract, with ground truth; or a load."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta

from park.durations import parse_duration
from park.errors import HazardwatchError
from park.model import Park
from park.settings import load_settings
from park.sitefile import load_site
from simulators.park import SCENARIOS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="publish a simulated park (scenarios with ground truth) or a load")
    p.add_argument("--config", required=True, help="site file whose sensors to simulate")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of: {', '.join(SCENARIOS)}")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--duration", default="1h", help="simulated time to cover (it ends at the real now)")
    p.add_argument("--scenario-every", default="30m")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--truth-out", default="ground-truth.json", help="where to write what should be detected")
    p.add_argument("--load", metavar="E×P", help="load mode instead: e.g. 200x50 enterprises × points")
    p.add_argument("--rate", type=float, default=0.0, help="load mode: messages per second (0: flat out)")
    p.add_argument("--messages", type=int, default=100_000, help="load mode: how many messages")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.config)
        settings = load_settings(site)
    except HazardwatchError as err:
        print(f"✗ {err}", file=sys.stderr)
        return 1
    if args.load:
        from simulators.load import LoadSpec, publish_in_process

        ents, _, pts = args.load.lower().partition("x")
        spec = LoadSpec(int(ents), int(pts), "batch", args.messages, args.rate,
                        t0_ms=int(datetime.now(UTC).timestamp() * 1000) - 3_600_000)
        n, secs = publish_in_process(settings.mqtt_url, settings.mqtt_prefix, spec)
        print(f"published {n:,} messages in {secs:.1f}s ({n / secs:,.0f} msg/s)")
        return 0
    from simulators.publish import simulate

    unknown = [s for s in args.scenarios.split(",") if s and s not in SCENARIOS]
    if unknown:
        print(f"✗ unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 1
    park = Park.from_site(site)
    duration = parse_duration(args.duration)
    start = datetime.now(UTC) - duration
    started = datetime.now(UTC)

    def progress(t: datetime, sent: int) -> None:
        done = (t - start) / duration
        print(f"  {done:6.1%} simulated {t:%Y-%m-%d %H:%M} · {sent:,} readings published", end="\r", flush=True)

    truth = asyncio.run(simulate(park, settings.mqtt_url, settings.mqtt_prefix, seed=args.seed, start=start,
                                 speed=args.speed, duration=duration,
                                 scenario_every=parse_duration(args.scenario_every),
                                 scenarios=tuple(s for s in args.scenarios.split(",") if s), progress=progress))
    print()
    with open(args.truth_out, "w", encoding="utf-8") as f:
        json.dump({"start": start.isoformat(), "end": (start + duration + timedelta(minutes=5)).isoformat(),
                   "incidents": [i.as_dict() for i in truth]}, f, ensure_ascii=False, indent=2)
    print(f"✓ {len(truth)} incidents in {(datetime.now(UTC) - started).total_seconds():.0f}s; ground truth in "
          f"{args.truth_out} (score it: hazardwatch score --config {args.config} --truth {args.truth_out})")
    return 0
