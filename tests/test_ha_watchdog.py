"""Who watches the watcher: sd_notify into a real unix datagram socket, the heartbeat metric, a real
HTTP dead-man's switch, and the shipped systemd unit and Prometheus rules."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from hazardwatch.watchdog import HaMetrics, Heartbeat, HeartbeatConfig, SystemdNotifier
from park.errors import SettingsError
from tests.ha_helpers import until

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "ha"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's; yields it and its path."""
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    try:
        yield s, path
    finally:
        s.close()


def received(s: socket.socket) -> list[str]:
    s.setblocking(False)
    out = []
    try:
        while True:
            out.append(s.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        s.setblocking(True)
        s.settimeout(5)
    return out


def test_notifier_tells_systemd_ready_watchdog_status_and_stopping(notify_socket) -> None:  # type: ignore[no-untyped-def]
    s, path = notify_socket
    n = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_every == 15.0  # half of WatchdogSec=30s
    assert n.ready("主 leader, epoch 3") and n.watchdog() and n.status("standby") and n.stopping()
    assert [s.recv(4096).decode() for _ in range(4)] == ["READY=1\nSTATUS=主 leader, epoch 3", "WATCHDOG=1",
                                                         "STATUS=standby", "STOPPING=1"]


def test_notifier_reaches_an_abstract_socket_and_ignores_another_process_watchdog() -> None:
    name = f"hwha-{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        n = SystemdNotifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "4000000",
                             "WATCHDOG_PID": str(os.getpid() + 1)})
        assert n.watchdog_every is None  # the watchdog is meant for another process
        assert n.ready()
        assert s.recv(4096) == b"READY=1"
    outside = SystemdNotifier({})
    assert outside.watchdog_every is None and outside.ready() is False  # not run by systemd: nothing to do


def test_heartbeat_pings_the_watchdog_at_half_its_period_and_stamps_the_metric(notify_socket) -> None:  # type: ignore[no-untyped-def]
    s, path = notify_socket
    registry = CollectorRegistry()
    slept: list[float] = []
    wall = iter(range(1_000, 2_000, 5))

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise asyncio.CancelledError

    hb = Heartbeat(registry=registry, notifier=SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "8000000"}),
                   status=lambda: "leader, epoch 7", wall=lambda: float(next(wall)), sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(hb._beats())
    assert slept == [4.0, 4.0, 4.0]
    assert received(s) == ["WATCHDOG=1\nSTATUS=leader, epoch 7"] * 3
    assert registry.get_sample_value("hazardwatch_heartbeat_timestamp_seconds") == 1010.0


def test_a_stuck_service_withholds_its_heartbeat_and_says_why(notify_socket) -> None:  # type: ignore[no-untyped-def]
    s, path = notify_socket
    registry = CollectorRegistry()
    problem: list[str | None] = [None]
    now = [100.0]
    hb = Heartbeat(registry=registry, notifier=SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}),
                   alive=lambda: problem[0], wall=lambda: now[0])
    assert hb.beat()
    problem[0] = "rule stage has not ticked for 120 s"
    now[0] = 200.0
    assert not hb.beat()
    assert received(s) == ["WATCHDOG=1", "STATUS=NOT ALIVE: rule stage has not ticked for 120 s"]
    assert registry.get_sample_value("hazardwatch_heartbeat_timestamp_seconds") == 100.0


class _Switch(BaseHTTPRequestHandler):
    """A dead-man's switch: records pings; answers what the test says."""

    hits: list[str]
    answer: int

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(type(self).answer)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def switch() -> Iterator[tuple[str, type[_Switch]]]:
    handler = type("Switch", (_Switch,), {"hits": [], "answer": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        t.join()


def test_dead_mans_switch_is_pinged_and_failures_never_stop_the_service(switch, caplog) -> None:  # type: ignore[no-untyped-def]
    base, handler = switch
    secret = uuid.uuid4().hex
    registry = CollectorRegistry()
    problem: list[str | None] = [None]

    async def go() -> None:
        hb = Heartbeat(registry=registry, notifier=SystemdNotifier({}), alive=lambda: problem[0],
                       config=HeartbeatConfig(f"{base}/ping/{secret}", 60))
        assert await hb.ping()
        handler.answer = 503
        assert not await hb.ping()
        hb.config = HeartbeatConfig("http://127.0.0.1:9/ping/" + secret, 60)  # nothing listens there
        assert not await hb.ping()
        problem[0] = "stuck"
        hb.beat()
        hb.config = HeartbeatConfig(f"{base}/ping/{secret}", 60)
        assert not await hb.ping()  # not alive: the switch must go quiet

    asyncio.run(go())
    assert handler.hits == [f"/ping/{secret}"] * 2
    assert registry.get_sample_value("hazardwatch_heartbeat_url_pings_total", {"outcome": "ok"}) == 1
    assert registry.get_sample_value("hazardwatch_heartbeat_url_pings_total", {"outcome": "failed"}) == 2
    assert secret not in caplog.text and "answered 503" in caplog.text


def test_heartbeat_runs_both_loops_until_cancelled(notify_socket, switch) -> None:  # type: ignore[no-untyped-def]
    s, path = notify_socket
    base, handler = switch

    async def go() -> None:
        hb = Heartbeat(registry=CollectorRegistry(),
                       notifier=SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}),
                       config=HeartbeatConfig(f"{base}/p", 5))
        task = asyncio.create_task(hb.run())
        try:
            await until(lambda: len(handler.hits) >= 1, "the switch is pinged")
            got: list[str] = []

            def three_pings() -> bool:
                got.extend(received(s))
                return got.count("WATCHDOG=1") >= 3

            await until(three_pings, "systemd hears WATCHDOG=1 every 50 ms")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())


def test_heartbeat_settings_from_the_environment() -> None:
    assert HeartbeatConfig.from_env({}) == HeartbeatConfig(None, 60.0)
    assert HeartbeatConfig.from_env({"HAZARDWATCH_HEARTBEAT_URL": "https://hc.example/abc",
                                     "HAZARDWATCH_HEARTBEAT_EVERY": "30"}) == HeartbeatConfig("https://hc.example/abc",
                                                                                              30.0)
    for env, name in [({"HAZARDWATCH_HEARTBEAT_URL": "hc.example/abc"}, "HAZARDWATCH_HEARTBEAT_URL"),
                      ({"HAZARDWATCH_HEARTBEAT_EVERY": "soon"}, "HAZARDWATCH_HEARTBEAT_EVERY"),
                      ({"HAZARDWATCH_HEARTBEAT_EVERY": "1"}, "HAZARDWATCH_HEARTBEAT_EVERY")]:
        with pytest.raises(SettingsError) as e:
            HeartbeatConfig.from_env(env)
        assert e.value.name == name


def test_ha_metrics_follow_the_elector() -> None:
    registry = CollectorRegistry()
    m = HaMetrics(registry)

    class T:
        epoch = 4

    m("standby", None, "connected")
    assert registry.get_sample_value("hazardwatch_ha_leader") == 0
    m("leader", T(), "took over")
    assert registry.get_sample_value("hazardwatch_ha_leader") == 1
    assert registry.get_sample_value("hazardwatch_ha_epoch") == 4
    m("standby", None, "lease ran out")
    assert registry.get_sample_value("hazardwatch_ha_leader") == 0
    assert registry.get_sample_value("hazardwatch_ha_role_changes_total", {"role": "standby"}) == 2


# -- the shipped deployment files ----------------------------------------------------------------


def test_prometheus_rules_parse_and_alert_on_a_silent_instance() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus-rules.yml").read_text(encoding="utf-8"))
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {"HazardwatchHeartbeatStale", "HazardwatchNoLeader", "HazardwatchSeveralLeaders"}
    assert "hazardwatch_heartbeat_timestamp_seconds" in alerts["HazardwatchHeartbeatStale"]["expr"]
    for r in alerts.values():
        assert r["labels"]["severity"] in ("critical", "warning") and r["annotations"]["summary"]
    promtool = shutil.which("promtool")
    if promtool:  # the real checker where Debian's prometheus package is installed
        done = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus-rules.yml")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_systemd_unit_asks_for_the_watchdog_this_module_feeds() -> None:
    text = (DEPLOY.parent / "systemd" / "hazardwatch.service").read_text(encoding="utf-8")
    keys = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert keys["Type"] == "notify" and keys["NotifyAccess"] == "main"
    # notifications come from the main process; a watchdog period the beat (half of it) can keep
    assert int(keys["WatchdogSec"].rstrip("s")) >= 10 and keys["Restart"] == "always"
    assert keys["ExecStart"].split()[1:3] == ["run", "--config"]
