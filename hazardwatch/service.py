"""The whole service in one process: ingest → rules → alerting, the HTTP API, and upkeep.

``run_service`` opens the pool, brings the schema up to date, syncs the registry from the site
file, and runs one ``asyncio.TaskGroup`` of named stage tasks joined by bounded queues.
Shutdown is cancellation (Ctrl-C, SIGTERM, or the caller cancelling the task).

Each stage runs under ``supervise``: an exception that escapes a stage (a bug: transient faults
are handled inside) is logged with its traceback, the stage reported degraded, and restarted
with capped, jittered back-off. The service ends only on shutdown or on a configuration error at
start (bad site file or settings, the HTTP port taken). One ``Health`` collects every stage's
state for ``/readyz`` and ``hazardwatch_stage_degraded{stage}``; one ``DbGate`` over the local
journal decides whether alarms and messages go to the database or the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, Gauge
from psycopg_pool import AsyncConnectionPool

from alerting import service as alerting_service
from alerting.links import LinkSigner
from alerting.service import AlertingService
from hazardwatch.api import create_app
from hazardwatch.leadership import (
    ForwardedCommands,
    Leadership,
    TermMetrics,
    command_handler,
    fenced_sessions,
    is_fenced,
)
from hazardwatch.loopwatch import LoopWatch
from hazardwatch.memtrim import MemoryTrim
from hazardwatch.watchdog import HaMetrics, Heartbeat, HeartbeatConfig, SystemdNotifier
from ingest.service import IngestService
from park import redact
from park.clock import Clock, SystemClock
from park.db import open_pool
from park.db.cluster import Beacon
from park.db.commands import CommandClient, CommandDispatcher
from park.db.lease import Elector, Term
from park.db.maintenance import configure_policies, run_maintenance
from park.db.migrate import Edition, migrate
from park.db.registry import sync_registry
from park.db.syncrep import SyncRepGuard
from park.errors import HazardwatchError
from park.health import Health, StageState
from park.journal import DbGate, Flusher, Journal, is_transient
from park.model import Park
from park.proc import trim_memory
from park.settings import Settings
from park.site import Site
from park.types import AlarmEvent, BrokerState, GatewayClock, GatewayStatus, ReadingBatch
from rules import service as rules_service
from rules.service import RulesService

log = logging.getLogger("hazardwatch")

MAINTENANCE_EVERY = timedelta(minutes=5)
READINGS_QUEUE = 256  # batches, not readings: a full queue pushes back on ingest
ALARMS_QUEUE = 10_000
RESTART_MIN, RESTART_MAX = 1.0, 60.0  # seconds between restarts of a failing stage
STABLE_AFTER = 60.0  # a stage that ran this long without failing starts its back-off afresh


class ServiceError(HazardwatchError):
    """The service cannot start (no database configured, …)."""


@dataclass(slots=True)
class ServiceHandle:
    """What a caller (demo, tests) can see of a running service once it is ready."""

    settings: Settings
    park: Park
    pool: AsyncConnectionPool
    edition: Edition
    ingest: IngestService
    rules: RulesService
    alerting: AlertingService
    registry: CollectorRegistry
    http_url: str
    health: Health
    gate: DbGate
    flusher: Flusher
    leadership: Leadership | None = None


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: shutdown is the TaskGroup's cancellation."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_http(app: Any, host: str, port: int) -> None:
    # proxy headers are the app's business (http.trusted_proxies), never believed by default; the
    # lifespan runs the app's own resources (the live-stream listener); log_config=None: uvicorn's
    # records go through the root handlers, whose filter masks secrets
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                    lifespan="on", proxy_headers=False, timeout_graceful_shutdown=2,
                                    log_config=None))
    try:
        await server.serve()
        if not server.started:
            raise ServiceError(f"HTTP API could not listen on {host}:{port} (port in use?)")
    finally:
        if server.started and not server.should_exit:
            server.should_exit = True
            await server.shutdown()


async def maintenance_loop(pool: AsyncConnectionPool, edition: Edition, site: Site, clock: Clock) -> None:
    """Retention and rollups where the database does not run them itself."""
    full = True  # the first pass re-reads the last two hours whole (park/db/maintenance.py)
    while True:
        try:
            async with pool.connection() as conn:
                rep = await run_maintenance(conn, edition, site.retention, clock.now(),
                                            late_after=site.alarm_management.backfill_after, full=full, pause=1.0)
            full = False
            log.debug("maintenance: %s", rep)
        except Exception as e:  # the database may be down; ingest handles that, upkeep just waits
            if is_transient(e):  # expected during an outage: one line, no traceback
                log.warning("maintenance pass skipped, the database is away (%s); retrying in %.0f s",
                            type(e).__name__, MAINTENANCE_EVERY.total_seconds())
            else:
                log.warning("maintenance pass failed; retrying later", exc_info=True)
        await asyncio.sleep(MAINTENANCE_EVERY.total_seconds())


async def supervise(name: str, run: Callable[[], Awaitable[None]], health: Health,
                    fatal: tuple[type[BaseException], ...] = (), restart_min: float = RESTART_MIN) -> None:
    """Run a stage forever: a failure is logged with its traceback and the stage restarted with back-off.

    ``fatal`` exceptions (a configuration error) end the service instead. Cancellation is shutdown."""
    delay = restart_min
    while True:
        started = time.monotonic()
        try:
            await run()
            log.error("stage %s returned; restarting it", name)
        except asyncio.CancelledError:
            raise
        except fatal:
            raise
        except Exception as e:
            if is_fenced(e):
                raise  # the term is over: the leader's stages end, nothing restarts them

            log.error("stage %s failed; restarting it in %.0f s", name, delay, exc_info=True)
            health.degraded(name, f"failed: {type(e).__name__}")
        health.restarted(name)
        if time.monotonic() - started > STABLE_AFTER:
            delay = restart_min
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(RESTART_MAX, delay * 2)


TERM_STAGES = ("ingest", "rules", "alerting", "commands", "maintenance")  # the leader's, for one term


def is_term_stage(stage: str) -> bool:
    """``stage`` is one of a leader term's stages or a part of one (``ingest.broker[mq-b:1883]``)."""
    return re.split(r"[.\[]", stage, maxsplit=1)[0] in TERM_STAGES


def journal_path(settings: Settings) -> Path:
    """One journal per instance and broker session, in the data directory (two instances on one
    host with one data directory must not share it)."""
    base = Path(settings.data_dir).expanduser() if settings.data_dir else Path.home() / ".local/share/hazardwatch"
    name = f"{settings.mqtt_client_id}-{settings.instance}"
    return base / f"journal-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.sqlite3"


def service_redactor(site: Site, settings: Settings) -> redact.Redactor:
    vals = redact.secret_values(site)
    vals |= redact.url_password(settings.database_url.get_secret_value() if settings.database_url else None)
    for url in settings.mqtt_urls or (settings.mqtt_url,):
        vals |= redact.url_password(url)
    if settings.link_secret is not None:
        vals.add(settings.link_secret.get_secret_value())
    return redact.Redactor(vals)


def degraded_gauge(registry: CollectorRegistry, health: Health) -> None:
    g = Gauge("hazardwatch_stage_degraded", "1 while a stage is degraded (retrying a fault), else 0", ["stage"],
              registry=registry)

    def on_change(st: StageState) -> None:
        g.labels(st.stage).set(0 if st.ok else 1)

    health.listen(on_change)


async def link_secret(pool: AsyncConnectionPool, settings: Settings) -> bytes:
    """The acknowledgement-link key: from the environment, else one kept in the database."""
    if settings.link_secret is not None:
        return settings.link_secret.get_secret_value().encode()
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO app_secrets (name, value) VALUES ('ack_links', %s) ON CONFLICT (name) DO NOTHING",
            (secrets.token_bytes(32),),
        )
        cur = await conn.execute("SELECT value FROM app_secrets WHERE name = 'ack_links'")
        row = await cur.fetchone()
        assert row is not None
        return bytes(row[0])


async def run_service(
    settings: Settings,
    site: Site,
    *,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    on_ready: Callable[[ServiceHandle], None] | None = None,
) -> None:
    """Run until cancelled. ``on_ready`` is called once every stage is started.

    The service keeps ``site`` without its per-sensor models (compiled into the park's specs); they
    are freed once the caller drops its own reference (``hazardwatch run`` does)."""
    clock = clock or SystemClock()
    registry = registry if registry is not None else CollectorRegistry()
    if settings.database_url is None:
        raise ServiceError(
            "no database configured: set HAZARDWATCH_DATABASE_URL=postgresql://… or database.url in the "
            "site file (or use `hazardwatch demo`, which brings its own)"
        )
    redactor = service_redactor(site, settings)
    filters = redact.install(redactor)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request URL (robot keys, tokens)
    run = _run(settings, site, clock, registry, redactor, on_ready)
    del site  # handed over: _run keeps only what the service needs of it (Park.without_sensor_models)
    try:
        await run
    finally:
        for h, f in filters:
            h.removeFilter(f)


async def _run(settings: Settings, site: Site, clock: Clock, registry: CollectorRegistry, redactor: redact.Redactor,
               on_ready: Callable[[ServiceHandle], None] | None) -> None:
    assert settings.database_url is not None
    url = settings.database_url.get_secret_value()
    health = Health()
    degraded_gauge(registry, health)
    try:
        journal = Journal(journal_path(settings))
    except Exception as e:
        raise ServiceError(f"the local journal {journal_path(settings)} cannot be opened ({e}); set "
                           "HAZARDWATCH_DATA_DIR to a writable directory") from e
    async with open_pool(url, min_size=2, max_size=16) as pool:
        async with pool.connection() as conn:
            edition, applied = await migrate(conn)
            park = (await sync_registry(conn, site)).without_sensor_models()
            await configure_policies(conn, edition, site.retention)
        # from here on the site file as the service keeps it: the per-sensor models are freed once the
        # caller has let go of its own reference too (hazardwatch run does)
        site = park.site
        trim_memory()
        log.info("database %s ready (%s); migrations applied now: %s; %d sensors",
                 edition.value, settings.safe_dict()["database"], ", ".join(applied) or "none",
                 len(park.sensors))
        gate = DbGate(journal)
        flusher = Flusher(gate, pool)
        rules_service.register_flush(flusher)
        alerting_service.register_flush(flusher)
        if not gate.up:
            log.warning("the local journal holds %d entries from before the last stop: writing them now",
                        len(journal))
            journal.requeue_sending()  # a delivery the stop cut off: it goes out again
            await flusher.flush()  # before the stages restore from the database
        signer = LinkSigner(await link_secret(pool, settings))
        elector = Elector(url, settings.instance, ttl=settings.lease_ttl,
                          retry_every=min(1.0, settings.lease_ttl / 4))
        elector.listen(HaMetrics(registry))
        # every instance: a synchronous replica that is gone must not stall its commits, silently
        guard = SyncRepGuard(url, settings.instance, health=health, registry=registry,
                             wait_max=settings.sync_commit_wait, now=clock.now)
        leadership = Leadership(elector)
        notifier = SystemdNotifier()
        heartbeat = Heartbeat(registry=registry, notifier=notifier, config=HeartbeatConfig.from_env(),
                              status=lambda: f"{settings.instance}: {leadership.role}"
                              + (f", epoch {leadership.term.epoch}" if leadership.term else ""))

        readied: list[str] = []

        def ready_once(role: str, term: Term | None, reason: str) -> None:
            # systemd's READY=1 once the instance knows its role (standby or leader): the API serves then
            if role in ("standby", "leader") and not readied:
                readied.append(role)
                notifier.ready(f"{settings.instance}: {role}")

        elector.listen(ready_once)
        term_metrics = TermMetrics()
        registry.register(term_metrics)
        client = CommandClient(pool, instance=settings.instance)
        current: dict[str, Any] = {}  # the current term's stages (empty on a standby)
        http_url = f"http://{settings.http_host}:{settings.http_port}"
        app = create_app(park=park, pool=pool, commands=ForwardedCommands(client), settings=settings,
                         registry=registry, readiness=lambda: current["ingest"].connected if current else True,
                         links=signer, clock=clock, health=health)
        beacon = Beacon(pool, settings.instance, http_url=http_url, role=lambda: (
            leadership.role, leadership.term.epoch if leadership.term else None),
            detail=lambda: {"mqtt_client_id": settings.mqtt_client_id, "terms": leadership.terms}
            | {"sync_replica_confirming": guard.confirming}
            | ({"brokers": current["ingest"].brokers()} if current else {}))
        announced = False

        async def lead(term: Term) -> None:
            """The leader's stages for one term; cancelled when the term ends."""
            nonlocal announced
            # a journal message the last term's alerting was sending when it stopped stays "sending", and
            # the flusher waits for a delivery that will never record: it goes out again, same key
            if n := journal.requeue_sending():
                log.warning("%d message(s) of the local journal were being sent when the last term ended: "
                            "sending them again (same idempotency key)", n)
            await _flush_first(flusher, gate)  # an outage's alarms are in the database before the stages restore
            treg = CollectorRegistry()  # a term's stages are new objects: their metrics too (TermMetrics)
            async with open_pool(url, min_size=2, max_size=16, name="hazardwatch-leader", wait=False,
                                 configure=fenced_sessions(term)) as tpool:
                readings_q: asyncio.Queue[ReadingBatch | GatewayStatus | GatewayClock | BrokerState] = \
                    asyncio.Queue(maxsize=READINGS_QUEUE)
                alarms_q: asyncio.Queue[AlarmEvent] = asyncio.Queue(maxsize=ALARMS_QUEUE)
                ingest = IngestService(settings=settings, park=park, pool=tpool, sink=readings_q, registry=treg,
                                       health=health, clock=clock)
                rules = RulesService(park=park, pool=tpool, clock=clock, inbox=readings_q, outbox=alarms_q,
                                     registry=treg, gate=gate, health=health)
                alerting = AlertingService(settings=settings, park=park, pool=tpool, clock=clock, inbox=alarms_q,
                                           registry=treg, signer=signer, gate=gate, health=health, redact=redactor,
                                           may_send=leadership.may_act)
                dispatcher = CommandDispatcher(tpool, command_handler(rules), instance=settings.instance, term=term)
                term_metrics.current = treg
                current.update(ingest=ingest, rules=rules, alerting=alerting)
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(supervise("rules", rules.run, health), name="rules")
                        tg.create_task(supervise("alerting", alerting.run, health), name="alerting")
                        tg.create_task(supervise("ingest", ingest.run, health), name="ingest")
                        tg.create_task(supervise("commands", dispatcher.run, health), name="commands")
                        tg.create_task(supervise("maintenance", lambda: maintenance_loop(tpool, edition, site, clock),
                                                 health), name="maintenance")
                        handle = ServiceHandle(settings, park, pool, edition, ingest, rules, alerting, registry,
                                               http_url, health, gate, flusher, leadership)
                        tg.create_task(_announce(handle, None if announced else on_ready), name="announce")
                        announced = True
                finally:
                    term_metrics.current = None
                    current.clear()
                    # a standby's /readyz must not keep the last term's stages (a broker session handed
                    # over, a write cut off) degraded for ever: they ended with the term
                    for stage in [s for s in health.stages if is_term_stage(s)]:
                        health.forget(stage)

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(supervise("lease", elector.run, health, fatal=(HazardwatchError,)), name="lease")
                tg.create_task(leadership.run(lead), name="leadership")
                tg.create_task(supervise("command-outcomes", client.run, health), name="command-outcomes")
                tg.create_task(supervise("journal", flusher.run, health), name="journal")
                tg.create_task(supervise("instance-heartbeat", beacon.run, health), name="instance-heartbeat")
                tg.create_task(supervise("watchdog", heartbeat.run, health), name="watchdog")
                tg.create_task(supervise("loop-watch", LoopWatch(registry).run, health), name="loop-watch")
                tg.create_task(supervise("syncrep-guard", guard.run, health), name="syncrep-guard")
                tg.create_task(supervise("memory-trim", MemoryTrim().run, health), name="memory-trim")
                tg.create_task(serve_http(app, settings.http_host, settings.http_port), name="http")
        finally:
            journal.close()


async def _flush_first(flusher: Flusher, gate: DbGate) -> None:
    delay = 0.2
    while not gate.up:
        try:
            await flusher.flush()
            if gate.up:
                return
        except Exception as e:
            if not is_transient(e):
                raise
        # the database away, or something kept the gate shut: look again later, never in a tight loop
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(5.0, delay * 2)


async def _announce(h: ServiceHandle, on_ready: Callable[[ServiceHandle], None] | None) -> None:
    """Say so once every stage is really up (subscribed, restored)."""
    await h.rules.restored.wait()
    await h.alerting.restored.wait()
    await h.ingest.subscribed.wait()
    log.info("hazardwatch running: board %s/ · MQTT %s · topics %s/# (history, …/+/backfill, in a session of its "
             "own)", h.http_url, h.settings.safe_dict()["mqtt"], h.settings.mqtt_prefix)
    if on_ready is not None:
        on_ready(h)
