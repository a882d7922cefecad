"""Who watches the watcher: systemd's watchdog, a heartbeat metric, a dead-man's switch.

A dead or hung hazardwatch must never look like a calm park. Three independent paths say so:

- **systemd** (``Type=notify``, ``WatchdogSec=``): ``READY=1`` once the service runs,
  ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` from the event loop, ``STATUS=…`` for
  ``systemctl status``. A hung loop stops the pings and systemd restarts the process.
- **Prometheus**: ``hazardwatch_heartbeat_timestamp_seconds`` is stamped on every beat; the
  alert rules in ``deploy/ha/`` fire when it stops moving or the scrape fails.
- **An external URL** (``HAZARDWATCH_HEARTBEAT_URL``, e.g. a healthchecks-style dead-man's
  switch run outside the park's servers): a GET every ``HAZARDWATCH_HEARTBEAT_EVERY`` seconds
  (default 60). When every instance is down the pings stop and that service tells the park's
  contacts — the one path that works when this machine, its database and its Prometheus are gone.

An optional ``alive()`` check withholds the beat (all three paths) while it returns a reason. Use
it only for a stuck pipeline that a restart would cure; a degraded dependency (database away)
must not make systemd restart the service in a loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from park.errors import SettingsError

log = logging.getLogger("hazardwatch.watchdog")

DEFAULT_EVERY = 10.0  # seconds between beats when systemd asks for no watchdog


class SystemdNotifier:
    """``sd_notify`` over the datagram socket systemd names in ``NOTIFY_SOCKET``; a no-op without it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = ("\0" + path[1:]) if path.startswith("@") else (path or None)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.watchdog_usec = int(usec) if usec.isdigit() and int(usec) > 0 and mine else 0
        self.failures = 0

    @property
    def watchdog_every(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of systemd's ``WatchdogSec``), or None."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False (and logged once) when it cannot."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # never stall the event loop on a full receiver queue
                sock.sendto("\n".join(assignments).encode(), self.address)
            return True
        except OSError as e:
            if self.failures == 0:
                log.warning("systemd notification socket: %s", e)
            self.failures += 1
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    url: str | None = None
    every: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HeartbeatConfig:
        env = os.environ if environ is None else environ
        url = env.get("HAZARDWATCH_HEARTBEAT_URL") or None
        if url is not None:
            u = urlsplit(url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise SettingsError("HAZARDWATCH_HEARTBEAT_URL", "write an http:// or https:// address, e.g. "
                                    "https://hc-ping.com/<uuid>")
        raw = env.get("HAZARDWATCH_HEARTBEAT_EVERY", "60")
        try:
            every = float(raw)
        except ValueError:
            every = -1.0
        if not 5 <= every <= 3600:
            raise SettingsError("HAZARDWATCH_HEARTBEAT_EVERY", f"{raw!r}: seconds between pings, 5 to 3600")
        return cls(url, every)


def safe_url(url: str) -> str:
    """The URL without its path and query: dead-man's-switch URLs carry their secret there."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''}/…"


class Heartbeat:
    """Beats while the service is alive: systemd watchdog, the heartbeat metric, the external URL.

    ``run()`` runs until cancelled. ``status()`` (e.g. "leader, epoch 7") is shown by systemd.
    """

    def __init__(self, *, registry: CollectorRegistry, notifier: SystemdNotifier | None = None,
                 config: HeartbeatConfig | None = None, alive: Callable[[], str | None] | None = None,
                 status: Callable[[], str] | None = None, wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 http: httpx.AsyncClient | None = None) -> None:
        self.notifier = notifier or SystemdNotifier()
        self.config = config or HeartbeatConfig()
        self.alive, self.status, self.wall, self.sleep, self.http = alive, status, wall, sleep, http
        self.every = self.notifier.watchdog_every or DEFAULT_EVERY
        self.last_problem: str | None = None
        self.beat_ts = Gauge("hazardwatch_heartbeat_timestamp_seconds",
                             "When this instance last proved itself alive (Unix time); alert when it stops moving",
                             registry=registry)
        self.url_pings = Counter("hazardwatch_heartbeat_url_pings_total",
                                 "Pings to the external heartbeat URL, by outcome", ["outcome"], registry=registry)

    def beat(self) -> bool:
        """One beat; False when ``alive()`` withheld it."""
        problem = self.alive() if self.alive is not None else None
        if problem != self.last_problem:
            if problem:
                log.error("heartbeat withheld: %s", problem)
            elif self.last_problem:
                log.warning("heartbeat resumed (was withheld: %s)", self.last_problem)
            self.last_problem = problem
        text = f"NOT ALIVE: {problem}" if problem else (self.status() if self.status else "")
        if problem is None:
            self.beat_ts.set(self.wall())
            self.notifier.notify("WATCHDOG=1", *([f"STATUS={text}"] if text else []))
        else:
            self.notifier.status(text)
        return problem is None

    async def ping(self) -> bool:
        """One GET of the external URL (when configured and alive); failures are counted, never raised."""
        url = self.config.url
        if url is None or self.last_problem is not None:
            return False
        client = self.http or httpx.AsyncClient(timeout=10.0)
        try:
            resp = await client.get(url, timeout=10.0)
            ok = resp.is_success
            if not ok:
                log.warning("heartbeat URL %s answered %d", safe_url(url), resp.status_code)
        except httpx.HTTPError as e:
            ok = False
            log.warning("heartbeat URL %s unreachable: %s", safe_url(url), type(e).__name__)
        finally:
            if self.http is None:
                await client.aclose()
        self.url_pings.labels("ok" if ok else "failed").inc()
        return ok

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._beats(), name="heartbeat")
            if self.config.url is not None:
                tg.create_task(self._pings(), name="heartbeat-url")

    async def _beats(self) -> None:
        while True:
            self.beat()
            await self.sleep(self.every)

    async def _pings(self) -> None:
        while True:
            await self.ping()
            await self.sleep(self.config.every)


class HaMetrics:
    """This instance's view of leadership, for the alert rules: exactly one leader in the park."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge("hazardwatch_ha_leader", "1 while this instance leads, else 0", registry=registry)
        self.epoch = Gauge("hazardwatch_ha_epoch", "Fencing epoch of this instance's current or last term",
                           registry=registry)
        self.changes = Counter("hazardwatch_ha_role_changes_total", "Changes of this instance's role, by new role",
                               ["role"], registry=registry)

    def __call__(self, role: str, term: object, reason: str) -> None:
        """An ``Elector.listen`` listener."""
        self.leader.set(1 if role == "leader" else 0)
        epoch = getattr(term, "epoch", None)
        if epoch is not None:
            self.epoch.set(epoch)
        self.changes.labels(role).inc()
