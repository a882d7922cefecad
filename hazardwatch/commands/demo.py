"""``hazardwatch demo``: a working park in one command, with nothing installed or configured.

With no broker and no database configured it starts an embedded MQTT broker (amqtt) and an
embedded PostgreSQL (pgserver) in a data folder, writes a demo park (2 districts, 4 towns,
12 enterprises, about 300 sensors), runs the simulator with incidents recurring every few
minutes, the whole pipeline and the duty-room board, and prints where to look. Notifications go
to the console. HAZARDWATCH_MQTT_URL / HAZARDWATCH_DATABASE_URL, when set, are used instead.
Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr

from hazardwatch.commands.run import run_until_stopped
from park.durations import parse_duration
from park.settings import EnvSettings, load_settings
from park.sitefile import load_site

log = logging.getLogger("hazardwatch.demo")
FIRST_INCIDENT = timedelta(seconds=10)  # the whole cycle on the board within the first minute


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hazardwatch" / "demo"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="zero-setup demo: embedded broker and database, simulated park, board")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="where the demo keeps its data")
    p.add_argument("--http-addr", default=os.environ.get("HAZARDWATCH_HTTP_ADDR", "127.0.0.1:8080"))
    p.add_argument("--mqtt-port", type=int, default=11883, help="port of the embedded broker (a free one if taken)")
    p.add_argument("--scenario-every", default="3m", help="how often an incident starts (e.g. 90s, 3m)")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=run)


def _free(port: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def embedded_broker(port: int) -> AsyncIterator[str]:
    from amqtt.broker import Broker

    # amqtt warns at start about plugin settings the demo does not use; they read like errors
    logging.getLogger("amqtt").setLevel(logging.ERROR)

    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                     "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
                     "topic-check": {"enabled": False}})
    await broker.start()
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        await broker.shutdown()


def prune_stale_handles(folder: Path) -> list[int]:
    """Forget processes that held the embedded PostgreSQL and died without letting go (``kill -9``).

    pgserver stops the server when the last process in ``.handle_pids.json`` leaves; a dead pid
    left there would keep every later clean stop from stopping it. Returns the pids removed.
    """
    import psutil

    handles = folder / ".handle_pids.json"
    try:
        pids = [int(p) for p in json.loads(handles.read_text())]
    except (OSError, ValueError, TypeError):
        return []
    alive: list[int] = []
    gone: list[int] = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            cmd = " ".join([proc.name(), *proc.cmdline()]).lower()
            ok = proc.status() != psutil.STATUS_ZOMBIE and ("python" in cmd or "hazardwatch" in cmd)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            ok = False
        (alive if ok and pid != os.getpid() else gone).append(pid)
    if gone:
        handles.write_text(json.dumps(alive))
        log.info("embedded PostgreSQL: forgot %d stale handle(s) of processes gone: %s", len(gone), gone)
    return gone


@contextlib.contextmanager
def embedded_postgres(folder: Path) -> Iterator[str]:
    import pgserver

    folder.mkdir(parents=True, exist_ok=True)
    prune_stale_handles(folder)
    server = pgserver.get_server(str(folder), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def run(args: argparse.Namespace) -> int:
    from simulators.park import site_yaml

    data: Path = args.data_dir
    data.mkdir(parents=True, exist_ok=True)
    site_path = data / "site.yaml"
    if not site_path.exists():
        site_path.write_text(site_yaml(args.seed), encoding="utf-8")

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await demo(args, site_path)

    return run_until_stopped(main())


async def demo(args: argparse.Namespace, site_path: Path) -> None:
    for noisy in ("transitions", "amqtt", "pgserver"):  # their INFO lines would bury the demo's own output
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("hazardwatch.lease").setLevel(logging.ERROR)  # one instance: "leads, epoch N" says nothing
    warnings.filterwarnings("ignore", module="platformdirs")
    from hazardwatch.api.auth import create_token
    from hazardwatch.service import ServiceHandle, run_service
    from simulators.park import SCENARIOS
    from simulators.publish import simulate

    data: Path = args.data_dir
    site = load_site(site_path)
    env = EnvSettings()
    async with contextlib.AsyncExitStack() as stack:
        if env.mqtt_url:
            mqtt_url = env.mqtt_url
        else:
            print("… starting the embedded MQTT broker", flush=True)
            mqtt_url = await stack.enter_async_context(embedded_broker(_free(args.mqtt_port)))
        if env.database_url:
            db_url = env.database_url.get_secret_value()
        else:
            print(f"… starting the embedded PostgreSQL in {data / 'pg'} (first start takes a few seconds)", flush=True)
            db_url = await asyncio.to_thread(lambda: stack.enter_context(embedded_postgres(data / "pg")))
        settings = load_settings(site, EnvSettings(
            database_url=SecretStr(db_url), mqtt_url=mqtt_url, mqtt_client_id=env.mqtt_client_id or "hazardwatch-demo",
            mqtt_prefix=env.mqtt_prefix, http_addr=args.http_addr, public_url=env.public_url,
            link_secret=env.link_secret))
        ready: asyncio.Future[ServiceHandle] = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run_service(settings, site, on_ready=ready.set_result), name="service")
            h = await ready
            async with h.pool.connection() as conn, conn.transaction():
                token = await create_token(conn, h.park, "park", "demo duty room")
            c = h.park.counts()
            print(f"""
✓ hazardwatch demo running — {site.site.name}: {c['districts']} districts, {c['towns']} towns, \
{c['enterprises']} enterprises, {c['sensors']} sensors
  duty-room board   {h.http_url}/?token={token}
  wall screen       {h.http_url}/?wall=1&token={token}
  HTTP API          {h.http_url}/docs   (Authorization: Bearer {token})
  MQTT (gateways)   {mqtt_url}   topics {settings.mqtt_prefix}/{{enterprise}}/data
  database          {settings.safe_dict()['database']}   (Grafana: hazardwatch dashboards export)
  site file         {site_path}
  a gas release (red) starts in {FIRST_INCIDENT.seconds} s, then an incident every {args.scenario_every};
  notifications print below. Ctrl-C stops.
""", flush=True)
            every = parse_duration(args.scenario_every)
            tg.create_task(simulate(h.park, mqtt_url, settings.mqtt_prefix, seed=args.seed,
                                    scenario_every=every if every > timedelta(0) else timedelta(minutes=3),
                                    scenarios=("gas_release", *SCENARIOS), first_scenario_after=FIRST_INCIDENT),
                           name="simulator")


__all__ = ["demo", "embedded_broker", "embedded_postgres"]
