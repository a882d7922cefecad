"""Connection settings (docs/contract.md §6): environment first, then the site file, then defaults.

Built once in ``main`` and passed down. Secrets are ``SecretStr`` and never printed: not in
``repr``, not in ``safe_dict``, not in any error message.

Credentials inside URLs: an operator writes ``mqtt://user:password@host`` or
``postgresql://user:password@host/db`` and should not have to know which characters a URL
reserves. The user information is everything between ``://`` and the last ``@`` that is followed
by a host, so a password may hold ``#``, ``/``, ``?``, ``@`` and ``:`` as written; percent-encoded
passwords (``%23`` …) are decoded as usual (a literal ``%`` followed by two hex digits must be
written ``%25``). URLs handed on to libpq are rebuilt with the user information quoted.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import quote, unquote, urlsplit

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from park.durations import parse_duration
from park.errors import SettingsError
from park.site import Site

DEFAULT_HTTP_ADDR = "127.0.0.1:8080"
DEFAULT_BACKFILL = timedelta(days=7)  # docs/contract.md §1: older readings are rejected at the door
DEFAULT_LEASE_TTL = 10.0  # seconds a leader that stopped renewing keeps the lease (park/db/lease.py)
MIN_LEASE_TTL = 1.0
DEFAULT_SYNC_COMMIT_WAIT = 3.0  # seconds a commit may wait for a synchronous replica (park/db/syncrep.py)
# host[:port], a bracketed IPv6 address, or libpq's comma-separated host list
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]*)(?::[^,/?#@\[\]]*)?"  # any port text: checked later
_AUTHORITY = re.compile(rf"^{_HOST}(?:,{_HOST})*$")


@dataclass(frozen=True, slots=True)
class UrlParts:
    """A URL split with its credentials apart: ``scheme://[user[:password]@]rest``."""

    scheme: str
    user: str | None
    password: str | None
    rest: str  # host[:port][/path][?query]

    def masked(self) -> str:
        if self.user is None:
            return f"{self.scheme}://{self.rest}"
        pw = ":***" if self.password is not None else ""
        return f"{self.scheme}://{quote(self.user, safe='')}{pw}@{self.rest}"

    def quoted(self) -> str:
        """The URL with its user information percent-encoded, as libpq and urllib expect it."""
        if self.user is None:
            return f"{self.scheme}://{self.rest}"
        pw = f":{quote(self.password, safe='')}" if self.password is not None else ""
        return f"{self.scheme}://{quote(self.user, safe='')}{pw}@{self.rest}"


def split_url(url: str) -> UrlParts | None:
    """Split ``url`` leniently (see the module's docstring); None when it has no ``scheme://``."""
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return None
    at = len(rest)
    while True:
        at = rest.rfind("@", 0, at)
        if at < 0:
            return UrlParts(scheme, None, None, rest)
        authority = re.split(r"[/?#]", rest[at + 1:], maxsplit=1)[0]
        if _AUTHORITY.match(authority):
            break
    userinfo, rest = rest[:at], rest[at + 1:]
    user, colon, password = userinfo.partition(":")
    return UrlParts(scheme, unquote(user), unquote(password) if colon else None, rest)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: safe to print."""
    parts = split_url(url)
    if parts is None:
        return "(not a URL)" if "password" in url.lower() or "@" in url else url
    return parts.masked()


def quote_db_url(url: str) -> str:
    """A PostgreSQL URL with its credentials percent-encoded for libpq; a ``key=value`` conninfo as is."""
    parts = split_url(url)
    if parts is None:
        return url
    if parts.scheme not in ("postgresql", "postgres"):
        raise SettingsError("HAZARDWATCH_DATABASE_URL", f"{parts.masked()}: use postgresql://user:password@host/db")
    return parts.quoted()


class EnvSettings(BaseSettings):
    """What the environment says; every field optional."""

    model_config = SettingsConfigDict(env_prefix="HAZARDWATCH_", extra="ignore")

    database_url: SecretStr | None = None
    mqtt_url: str | None = None
    mqtt_client_id: str | None = None
    mqtt_prefix: str | None = None
    http_addr: str | None = None
    public_url: str | None = None
    link_secret: SecretStr | None = None  # signs acknowledgement links; generated if unset
    data_dir: str | None = None  # the local journal (alarms and messages during a database outage)
    mqtt_ca_file: str | None = None  # PEM file of the CA(s) that signed the broker's certificate
    mqtt_cert_file: str | None = None  # client certificate (PEM), when the broker asks for one
    mqtt_key_file: str | None = None  # its private key (PEM)
    backfill: str | None = None  # how old a reading may be and still be stored (default 7d)
    instance: str | None = None  # this instance's name among several on one database (default: the host name)
    lease_ttl: str | None = None  # how long a silent leader keeps the lease (default 10s)
    sync_commit_wait: str | None = None  # how long a commit may wait for a synchronous replica (default 3s)


@dataclass(frozen=True, slots=True)
class MqttTarget:
    host: str
    port: int
    tls: bool
    username: str | None
    password: SecretStr | None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def parse(cls, url: str, *, ca_file: str | None = None, cert_file: str | None = None,
              key_file: str | None = None) -> MqttTarget:
        parts = split_url(url)
        shown = parts.masked() if parts else mask_url(url)
        if parts is None or parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise SettingsError("HAZARDWATCH_MQTT_URL", f"{shown!r}: use mqtt://host:port or mqtts://host:port")
        tls = parts.scheme in ("mqtts", "ssl")
        u = urlsplit(f"{parts.scheme}://{parts.rest}")
        if not u.hostname:
            raise SettingsError("HAZARDWATCH_MQTT_URL", f"{shown!r} has no host")
        try:
            port = u.port or (8883 if tls else 1883)
        except ValueError:
            raise SettingsError("HAZARDWATCH_MQTT_URL", f"{shown!r} has a bad port") from None
        if (cert_file is None) != (key_file is None):
            raise SettingsError("HAZARDWATCH_MQTT_CERT_FILE", "a client certificate needs its key file too "
                                "(HAZARDWATCH_MQTT_CERT_FILE and HAZARDWATCH_MQTT_KEY_FILE)")
        pw = SecretStr(parts.password) if parts.password is not None else None
        return cls(u.hostname, port, tls, parts.user or None, pw, ca_file, cert_file, key_file)

    @property
    def name(self) -> str:
        """How the broker is named in metrics, alarms and status: ``host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"MqttTarget({'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}, user={self.username!r})"


# several brokers in one setting: a comma that starts the next URL (a password may hold commas)
_NEXT_URL = re.compile(r"\s*,\s*(?=(?:mqtts?|tcp|ssl)://)", re.IGNORECASE)


def split_mqtt_urls(value: str) -> list[str]:
    """``HAZARDWATCH_MQTT_URL`` may list several brokers, comma-separated: ``mqtt://a:1883,mqtt://b:1883``."""
    return [u.strip() for u in _NEXT_URL.split(value.strip()) if u.strip()]


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: SecretStr | None
    mqtt_url: str = field(repr=False)  # may carry a password: shown only through safe_dict()
    mqtt_client_id: str
    mqtt_prefix: str
    http_host: str
    http_port: int
    public_url: str
    link_secret: SecretStr | None
    data_dir: str | None = None  # default: ~/.local/share/hazardwatch
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None
    mqtt_key_file: str | None = None
    backfill: timedelta = DEFAULT_BACKFILL
    instance: str = field(default_factory=lambda: socket.gethostname()[:100])
    lease_ttl: float = DEFAULT_LEASE_TTL

    mqtt_urls: tuple[str, ...] = field(default=(), repr=False)  # every broker, mqtt_url first; () = just mqtt_url
    sync_commit_wait: float = DEFAULT_SYNC_COMMIT_WAIT

    @property
    def mqtt(self) -> MqttTarget:
        """The first (or only) broker."""
        return MqttTarget.parse(self.mqtt_url, ca_file=self.mqtt_ca_file, cert_file=self.mqtt_cert_file,
                                key_file=self.mqtt_key_file)

    @property
    def brokers(self) -> list[MqttTarget]:
        """Every broker hazardwatch reads from (docs/operations.en.md, "Two brokers"), in the order written."""
        return [MqttTarget.parse(u, ca_file=self.mqtt_ca_file, cert_file=self.mqtt_cert_file,
                                 key_file=self.mqtt_key_file) for u in (self.mqtt_urls or (self.mqtt_url,))]

    def safe_dict(self) -> dict[str, str]:
        """For logs and ``check-config``: secrets masked."""
        db = self.database_url.get_secret_value() if self.database_url else "(not set)"
        return {
            "database": _mask_url(db),
            "mqtt": ", ".join(_mask_url(u) for u in (self.mqtt_urls or (self.mqtt_url,))),
            "mqtt_client_id": self.mqtt_client_id,
            "mqtt_prefix": self.mqtt_prefix,
            "http": f"{self.http_host}:{self.http_port}",
            "public_url": self.public_url,
            "backfill": str(self.backfill),
            "instance": self.instance,
            "lease_ttl": f"{self.lease_ttl:g}s",
            "sync_commit_wait": f"{self.sync_commit_wait:g}s",
        }


def load_settings(site: Site | None = None, env: EnvSettings | None = None) -> Settings:
    """Merge environment over site file over defaults; raise SettingsError on a bad value."""
    env = env or EnvSettings()
    db = env.database_url or (site.database.url if site else None)
    if db is not None:
        db = SecretStr(quote_db_url(db.get_secret_value()))
    if env.mqtt_url:
        urls = split_mqtt_urls(env.mqtt_url)
    elif site and site.mqtt.urls:
        urls = list(site.mqtt.urls)
    else:
        urls = [(site.mqtt.url if site else None) or "mqtt://127.0.0.1:1883"]
    if not urls:
        raise SettingsError("HAZARDWATCH_MQTT_URL", "is empty: write mqtt://host:port, or several separated by commas")
    for k, url in enumerate(urls):
        parts = split_url(url)
        if site and site.mqtt.username and parts is not None and parts.user is None:
            pw = site.mqtt.password.get_secret_value() if site.mqtt.password else None
            urls[k] = UrlParts(parts.scheme, site.mqtt.username, pw, parts.rest).quoted()
    seen: dict[str, str] = {}
    for url in urls:
        t = MqttTarget.parse(url, ca_file=env.mqtt_ca_file, cert_file=env.mqtt_cert_file, key_file=env.mqtt_key_file)
        if t.name in seen:
            raise SettingsError("HAZARDWATCH_MQTT_URL", f"MQTT 代理 {t.name} 重复列出，每个代理只写一次"
                                f"（broker {t.name} is listed twice; list each broker once）")
        seen[t.name] = url
    mqtt_url = urls[0]
    backfill = timedelta(seconds=_seconds("HAZARDWATCH_BACKFILL", env.backfill,
                                          DEFAULT_BACKFILL.total_seconds(), 0.0, "7d"))
    client_id = env.mqtt_client_id or (site.mqtt.client_id if site else None) \
        or default_client_id(db.get_secret_value() if db is not None else None)
    lease_ttl = _seconds("HAZARDWATCH_LEASE_TTL", env.lease_ttl, DEFAULT_LEASE_TTL, MIN_LEASE_TTL, "10s")
    sync_wait = _seconds("HAZARDWATCH_SYNC_COMMIT_WAIT", env.sync_commit_wait, DEFAULT_SYNC_COMMIT_WAIT, 0.0, "3s")
    instance = (env.instance or socket.gethostname()).strip()[:100]
    if not instance:
        raise SettingsError("HAZARDWATCH_INSTANCE", "must not be empty: a name for this instance, e.g. hw-a")
    prefix = (env.mqtt_prefix or (site.mqtt.prefix if site else None) or "hw/v1").strip("/")
    addr = env.http_addr or (site.http.addr if site else None) or DEFAULT_HTTP_ADDR
    host, port = parse_addr(addr)
    public = env.public_url or (site.http.public_url if site else None) or f"http://{host}:{port}"
    return Settings(db, mqtt_url, client_id, prefix, host, port, public.rstrip("/"), env.link_secret,
                    env.data_dir, env.mqtt_ca_file, env.mqtt_cert_file, env.mqtt_key_file, backfill, instance,
                    lease_ttl, tuple(urls) if len(urls) > 1 else (), sync_wait)


def _seconds(name: str, text: str | None, default: float, least: float, example: str) -> float:
    """A duration setting in seconds: ``default`` when unset; longer than zero and at least ``least``."""
    if not text:
        return default
    try:
        got = parse_duration(text).total_seconds()
    except ValueError as e:
        raise SettingsError(name, str(e)) from None
    if got <= 0:
        raise SettingsError(name, f"{text!r}: must be longer than zero, e.g. {example}")
    if got < least:
        raise SettingsError(name, f"{text!r} is too short: at least {least:g}s, e.g. {example}")
    return got


def default_client_id(database_url: str | None = None) -> str:
    """The broker session's client id: the same for every instance of one database.

    Only the leader connects, and a new leader must resume the old one's persistent session (its
    queue carries the gap), so the id comes from the database's name, not from the host; a
    restart resumes the same session too. Without a database: stable per host.
    """
    name = _database_name(database_url) if database_url else None
    if name:
        return f"hazardwatch-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"[:64]
    return f"hazardwatch-{socket.gethostname()}"[:64]


def _database_name(url: str) -> str | None:
    """The database name of a postgresql:// URL (``dbname=`` in its query wins), None if it has none."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        name = conninfo_to_dict(url).get("dbname")
    except Exception:  # a URL psycopg cannot read is reported by whatever connects with it
        return None
    return str(name) if name else None


def parse_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SettingsError("HAZARDWATCH_HTTP_ADDR", f"{addr!r}: write host:port, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def _mask_url(url: str) -> str:
    return mask_url(url)
