"""Start-up checks of the database and the broker: one clear line per attempt, a bounded wait.

``hazardwatch run`` calls :func:`preflight` before it starts any stage. Each dependency is tried
with capped, jittered back-off; every failed attempt prints one line naming the address (never a
password), what went wrong and what to check. If a dependency is still unreachable when the start
timeout ends, :class:`StartupError` says so in one line and the command exits non-zero — no
traceback. Once the service runs, a fault is transient and retried for ever; this bound is only
for start-up, where an unreachable address is usually a mistake in the configuration.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import psycopg
from psycopg.conninfo import conninfo_to_dict

from park.db.pool import safe_address
from park.errors import HazardwatchError
from park.settings import MqttTarget, Settings

RETRY_MIN, RETRY_MAX = 1.0, 10.0
ATTEMPT_TIMEOUT = 5.0


class StartupError(HazardwatchError):
    """A dependency stayed unreachable for the whole start-up timeout."""


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str  # what went wrong, without secrets
    hint: str  # what to check


def broker_address(target: MqttTarget) -> str:
    user = f"{target.username}@" if target.username else ""
    return f"{'mqtts' if target.tls else 'mqtt'}://{user}{target.host}:{target.port}"


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def database_failure(e: Exception, password: str | None) -> Failure:
    msg = _scrub(str(e), [password or ""]).strip()
    first = msg.splitlines()[0] if msg else type(e).__name__
    reason = first.rsplit(" failed: ", 1)[-1].replace("FATAL:  ", "").strip()
    low = msg.lower()
    if "connection refused" in low:
        hint = "nothing listens there: check that PostgreSQL runs on that host and port"
    elif "does not exist" in low and "database" in low:
        hint = "create the database (createdb …) or correct its name"
    elif "password" in low or "pg_hba" in low or "authentication" in low:
        hint = "check the user and password, and pg_hba.conf on the server"
    elif "resolve" in low or "name or service" in low:
        hint = "check the host name"
    elif "timeout" in low or "timed out" in low:
        hint = "no answer: check the network, a firewall, or the host"
    else:
        hint = "check the server and the URL"
    return Failure(reason, hint + " (HAZARDWATCH_DATABASE_URL, or database.url in the site file)")


async def check_database(url: str) -> Failure | None:
    password = conninfo_to_dict(url).get("password")
    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=int(ATTEMPT_TIMEOUT))
    except (psycopg.Error, OSError) as e:
        return database_failure(e, str(password) if password else None)
    await conn.close()
    return None


def check_broker_sync(target: MqttTarget, client_id: str) -> Failure | None:
    """Connect with the service's credentials and wait for the broker's answer (CONNACK).

    A client id of its own, with a clean session: the service's persistent session (and the
    readings queued in it) must not be touched by this probe.
    """
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{client_id[:40]}-probe-{uuid.uuid4().hex[:6]}",
                    clean_session=True, protocol=mqtt.MQTTv311)
    password = target.password.get_secret_value() if target.password else None
    if target.username:
        c.username_pw_set(target.username, password)
    if target.tls:
        c.tls_set_context(ssl.create_default_context())
    answer: list[mqtt.ReasonCode] = []
    done = threading.Event()

    def on_connect(client: mqtt.Client, u: object, flags: object, reason: mqtt.ReasonCode, p: object) -> None:
        answer.append(reason)
        done.set()

    c.on_connect = on_connect
    hint_net = "(HAZARDWATCH_MQTT_URL, or mqtt.url in the site file)"
    # TCP and TLS first, on a socket of our own: paho does not close the socket of a failed handshake
    try:
        with socket.create_connection((target.host, target.port), timeout=ATTEMPT_TIMEOUT) as raw:
            if target.tls:
                with ssl.create_default_context().wrap_socket(raw, server_hostname=target.host):
                    pass
    except ConnectionRefusedError:
        return Failure("connection refused",
                       f"nothing listens there: check that Mosquitto runs on that host and port {hint_net}")
    except ConnectionResetError:
        return Failure("connection reset during the TLS handshake",
                       f"is it a plain-MQTT port? use mqtt:// for it, mqtts:// for a TLS port {hint_net}")
    except ssl.SSLError as e:
        return Failure(f"TLS failed ({_scrub(str(e.reason or e), [password or ''])})",
                       f"is it a TLS port, and is the broker's CA trusted on this host? {hint_net}")
    except OSError as e:
        text = _scrub(e.strerror or str(e), [password or ""])
        return Failure(text, f"check the host name and the network {hint_net}")
    try:
        c.connect(target.host, target.port, keepalive=10)
        deadline = time.monotonic() + ATTEMPT_TIMEOUT
        while not done.is_set() and time.monotonic() < deadline:
            if c.loop(timeout=0.2) != mqtt.MQTT_ERR_SUCCESS and not done.is_set():
                return Failure("the broker closed the connection before answering",
                               f"TLS or plain MQTT on the wrong port? check the scheme mqtt:// or mqtts:// {hint_net}")
    except (ssl.SSLError, OSError) as e:  # it answered a moment ago: a transient fault
        return Failure(_scrub(str(e), [password or ""]), f"check the broker and the network {hint_net}")
    finally:
        c.disconnect()
        sock = c.socket()
        if sock is not None:
            sock.close()
    if not answer:
        return Failure("no answer within 5 s", f"is it an MQTT port? {hint_net}")
    if answer[0].is_failure:
        return Failure(f"refused: {answer[0]}",
                       "check the account's user name and password in HAZARDWATCH_MQTT_URL "
                       "(or mqtt.username / mqtt.password in the site file)")
    return None


async def check_broker(target: MqttTarget, client_id: str) -> Failure | None:
    return await asyncio.to_thread(check_broker_sync, target, client_id)


async def wait_for(what: str, address: str, attempt: Callable[[], Awaitable[Failure | None]], start: float,
                   limit: float, say: Callable[[str], None]) -> None:
    """Retry ``attempt`` with capped, jittered back-off until ``limit`` seconds after ``start``."""
    tries = 0
    while True:
        tries += 1
        failure = await attempt()
        if failure is None:
            if tries > 1:
                say(f"✓ {what} {address} reachable after {tries} attempts")
            return
        waited = time.monotonic() - start
        if waited >= limit:
            raise StartupError(
                f"{what} {address} unreachable for {waited:.0f} s ({failure.reason}): {failure.hint}; "
                "hazardwatch did not start")
        delay = min(RETRY_MAX, RETRY_MIN * 2 ** min(tries - 1, 6)) * random.uniform(0.75, 1.0)
        delay = max(0.0, min(delay, limit - waited))
        say(f"… {what} {address} unreachable ({failure.reason}) — {failure.hint}; "
            f"retry {tries + 1} in {delay:.0f} s, giving up {max(0.0, limit - waited):.0f} s from now")
        await asyncio.sleep(delay)


async def preflight(settings: Settings, limit: float, say: Callable[[str], None]) -> None:
    """Wait, ``limit`` seconds at most in all, until the database answers and the broker accepts
    the service's account."""
    start = time.monotonic()
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        await wait_for("database", safe_address(url), lambda: check_database(url), start, limit, say)
    targets = settings.brokers
    if len(targets) == 1:
        target = targets[0]
        await wait_for("MQTT broker", broker_address(target), lambda: check_broker(target, settings.mqtt_client_id),
                       start, limit, say)
        return

    async def any_broker() -> Failure | None:
        # several brokers: one answering is enough to start (the others raise their alarm if they stay away)
        failures = []
        for t in targets:
            failure = await check_broker(t, settings.mqtt_client_id)
            if failure is None:
                return None
            failures.append(f"{broker_address(t)}: {failure.reason}")
        return Failure("; ".join(failures), "check the brokers and the network (HAZARDWATCH_MQTT_URL, or mqtt.urls "
                       "in the site file)")

    await wait_for("MQTT brokers", ", ".join(broker_address(t) for t in targets), any_broker, start, limit, say)
