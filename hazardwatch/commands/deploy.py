"""``hazardwatch deploy mosquitto --config SITE.yaml --out DIR``: a secured broker for the park."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path

from park.durations import format_duration, parse_duration
from park.errors import HazardwatchError, SiteFileError
from park.sitefile import load_site


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="generate deployment files from the site file (a secured Mosquitto)")
    dsub = p.add_subparsers(dest="deploy_command", required=True, metavar="WHAT")
    m = dsub.add_parser(
        "mosquitto",
        help="Mosquitto configuration, password file and ACL: one account per enterprise gateway, TLS, "
             "anonymous refused, queue limits sized from the sensors",
        description="Writes mosquitto.conf, passwd, acl, credentials.tsv (the passwords to hand out), "
                    "hazardwatch.env (the service's own HAZARDWATCH_MQTT_URL) and, without --cert/--key, "
                    "a self-signed certs/ set for trials. Running it again keeps the passwords already issued.",
    )
    m.add_argument("--config", required=True, help="site file (YAML)")
    m.add_argument("--out", required=True, help="folder to write into (created if missing)")
    m.add_argument("--external", default="0.0.0.0:8883", help="TLS listener for gateways (default 0.0.0.0:8883)")
    m.add_argument("--internal", default="127.0.0.1:1883",
                   help="plain listener for hazardwatch itself, or 'none' (default 127.0.0.1:1883)")
    m.add_argument("--hostname", action="append", default=[],
                   help="name or address gateways use to reach the broker (repeatable; goes into the "
                        "self-signed certificate; default: this host's name, localhost, 127.0.0.1)")
    m.add_argument("--cert", help="the operator's server certificate (PEM); with --key, no self-signed set")
    m.add_argument("--key", help="the operator's server key (PEM)")
    m.add_argument("--ca", help="CA bundle to name in the configuration (optional)")
    m.add_argument("--hold", default="2h",
                   help="how long the broker must hold readings while hazardwatch is away (default 2h)")
    m.add_argument("--assume-interval", default="10s",
                   help="reporting interval assumed for sensors without interval: (default 10s)")
    m.add_argument("--data-dir", default="/var/lib/mosquitto/", help="Mosquitto's persistence folder")
    m.add_argument("--install-dir",
                   help="where these files will live on the broker host, if not --out (e.g. /mosquitto/config)")
    m.add_argument("--service-host",
                   help="host name hazardwatch uses for the broker in hazardwatch.env (default: the internal "
                        "listener's address)")
    m.set_defaults(func=run_mosquitto)


def run_mosquitto(args: argparse.Namespace) -> int:
    from hazardwatch.deploy.mosquitto import BrokerOptions, Listener, write_broker

    try:
        # the broker needs no secret from the site file: an unset ${…} (an SMS key …) does not matter here
        site = load_site(args.config, environ=_AnyEnvironment())
    except SiteFileError as e:
        print(f"✗ {e}", file=sys.stderr)
        return 1
    try:
        hostnames = list(dict.fromkeys(args.hostname or [socket.getfqdn(), "localhost", "127.0.0.1"]))
        opts = BrokerOptions(
            external=Listener.parse(args.external, "--external"),
            internal=None if args.internal.lower() == "none" else Listener.parse(args.internal, "--internal"),
            hold=_duration(args.hold, "--hold"),
            assume_interval=_duration(args.assume_interval, "--assume-interval"),
            data_dir=args.data_dir,
            install_dir=args.install_dir,
            hostnames=tuple(hostnames),
            cert=args.cert,
            key=args.key,
            ca=args.ca,
            service_host=args.service_host,
        )
        files = write_broker(site, Path(args.out), opts)
    except HazardwatchError as e:
        print(f"✗ {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"✗ cannot write {args.out}: {e.strerror} ({e.filename})", file=sys.stderr)
        return 1
    q = files.limits
    gateways = len(files.accounts) - 1
    print(f"✓ {files.out}: Mosquitto configuration for {site.site.name}")
    print(f"  accounts: hazardwatch + {gateways} enterprise gateways"
          + (f" ({len(files.new_accounts)} new: {', '.join(files.new_accounts)})" if files.new_accounts else ""))
    print(f"  gateways: TLS on {opts.external}; each publishes only under {site.mqtt.prefix}/<its code>/#; "
          "anonymous refused")
    if opts.internal:
        print(f"  hazardwatch: plain MQTT on {opts.internal} with its own account (see hazardwatch.env)")
    print(f"  queue: {q.messages:,} messages / {q.bytes / 2**20:,.0f} MiB per client — {q.sensors} sensors ≈ "
          f"{q.readings_per_s:.1f} readings/s held for {format_duration(q.hold)}; "
          f"≈ {q.memory_estimate / 2**20:,.0f} MiB of broker memory when full")
    if files.self_signed:
        print(f"  TLS: self-signed set for {', '.join(opts.hostnames)} in certs/ — for trials; give gateways "
              "certs/ca.crt, and use --cert/--key with the park's own certificate in production")
    else:
        print(f"  TLS: {files.tls.certfile}")
    print("  hand each vendor its line of credentials.tsv (mode 0600) and keep the file safe")
    print(f"  start: mosquitto -c {files.out / 'mosquitto.conf'}")
    return 0


class _AnyEnvironment(Mapping[str, str]):
    """The process environment, with a placeholder for any variable that is not set."""

    def __getitem__(self, name: str) -> str:
        return os.environ.get(name, f"unset-{name}")

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


def _duration(text: str, what: str) -> timedelta:
    from hazardwatch.deploy.mosquitto import DeployError

    try:
        return parse_duration(text)
    except ValueError as e:
        raise DeployError(f"{what}: {e}") from None
