"""A secured Mosquitto 2 broker for one park, generated from its site file.

``write_broker`` fills one folder:

- ``mosquitto.conf`` — listeners, authentication, ACL, persistence and queue limits;
- ``passwd`` — the accounts, hashed as ``mosquitto_passwd`` writes them (PBKDF2-SHA512, ``$7$``);
- ``acl`` — each enterprise's gateway may publish only under ``{prefix}/{code}/#`` (its live topics and
  ``…/backfill``, docs/contract.md §1); hazardwatch's own account reads ``{prefix}/#`` (its live session,
  and its history session on ``{prefix}/+/backfill``);
- ``credentials.tsv`` — the plain passwords to hand to each gateway vendor (mode 0600); kept
  across runs, so regenerating after adding an enterprise changes no existing gateway's password;
- ``hazardwatch.env`` — ``HAZARDWATCH_MQTT_URL`` with the service's own account (mode 0600);
- ``certs/`` — a self-signed CA and server certificate for trials, unless the operator gives
  their own certificate and key.

Planning (accounts, ACL, configuration text, queue sizing) is plain functions; only
``write_broker`` touches the file system.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import math
import os
import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from park.durations import format_duration
from park.errors import HazardwatchError
from park.site import Site

SERVICE_ACCOUNT = "hazardwatch"
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes by default
SALT_BYTES = 12
PASSWORD_LENGTH = 24
# letters and digits only: safe in a URL, a shell line and a gateway's web form alike
_PASSWORD_CHARS = string.ascii_letters + string.digits

# Queue sizing. The worst case is one reading per MQTT message (bare point topics); a 50-point
# gateway batch needs 50 times fewer messages and fewer bytes per reading.
MIN_QUEUED_MESSAGES = 100_000
BYTES_PER_READING = 160  # a single-point JSON payload is 60–120 bytes; a batch is ~40 per reading
# Broker memory per queued message: measured 400 bytes for a 47-byte single-point payload on
# Mosquitto 2.0.11 (`python -m hazardwatch.benchmarks.broker_queue`: 200,000 messages queued for an
# offline persistent session, all delivered on resume); with a payload of BYTES_PER_READING instead.
MEMORY_PER_MESSAGE = 520
QUEUE_MARGIN = 1.5


class DeployError(HazardwatchError):
    """A deployment artefact cannot be generated as asked (bad option, clashing names …)."""


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str) -> Listener:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise DeployError(f"{what} {text!r}: write host:port, e.g. 0.0.0.0:8883")
        return cls(host.strip("[]") or "0.0.0.0", int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """What the hazardwatch session's queue must hold while the service is away for ``hold``."""

    sensors: int
    readings_per_s: float
    hold: timedelta
    messages: int
    bytes: int

    @property
    def memory_estimate(self) -> int:
        """Broker memory for a full queue, in bytes (an estimate: see MEMORY_PER_MESSAGE)."""
        return self.messages * MEMORY_PER_MESSAGE


def queue_limits(site: Site, hold: timedelta, assume_interval: timedelta) -> QueueLimits:
    """Size the per-client queue from the site's sensors and their reporting intervals.

    A sensor without ``interval:`` is counted at ``assume_interval``. Mosquitto's default
    (1,000 messages) silently drops a persistent session's readings beyond that.
    """
    if hold <= timedelta(0) or assume_interval <= timedelta(0):
        raise DeployError("--hold and --assume-interval must be positive durations")
    sensors = [s for _, _, e in site.walk() for s in e.sensors]
    rate = sum(1.0 / (s.interval or assume_interval).total_seconds() for s in sensors)
    readings = math.ceil(rate * hold.total_seconds() * QUEUE_MARGIN)
    messages = max(MIN_QUEUED_MESSAGES, readings)
    return QueueLimits(len(sensors), rate, hold, messages, messages * BYTES_PER_READING)


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    password: str = field(repr=False)
    publishes: str | None = None  # topic filter this account may publish to
    reads: str | None = None  # topic filter this account may subscribe to
    note: str = ""


def new_password() -> str:
    return "".join(secrets.choice(_PASSWORD_CHARS) for _ in range(PASSWORD_LENGTH))


def plan_accounts(site: Site, existing: Mapping[str, str] | None = None) -> list[Account]:
    """hazardwatch's own account and one per enterprise gateway, keeping passwords already issued."""
    existing = existing or {}
    prefix = site.mqtt.prefix.strip("/")
    codes = [e.code for _, _, e in site.walk()]
    if SERVICE_ACCOUNT in codes:
        raise DeployError(f"an enterprise is coded {SERVICE_ACCOUNT!r}, the name of hazardwatch's own account")
    out = [Account(SERVICE_ACCOUNT, existing.get(SERVICE_ACCOUNT) or new_password(), reads=f"{prefix}/#",
                   note="hazardwatch itself (subscribes)")]
    for _, _, e in site.walk():
        out.append(Account(e.code, existing.get(e.code) or new_password(), publishes=f"{prefix}/{e.code}/#",
                           note=e.name))
    return out


def passwd_line(name: str, password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """One line of a Mosquitto 2 password file, as ``mosquitto_passwd`` writes it."""
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{name}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl_text(accounts: Iterable[Account]) -> str:
    lines = [
        "# Mosquitto ACL generated by `hazardwatch deploy mosquitto` from the site file.",
        "# Anonymous clients are refused by mosquitto.conf; a client without an entry here may do nothing.",
        "",
    ]
    for a in accounts:
        lines.append(f"# {a.note}" if a.note else "#")
        lines.append(f"user {a.name}")
        if a.reads:
            lines.append(f"topic read {a.reads}")
        if a.publishes:
            lines.append(f"topic write {a.publishes}")
        if a.name == SERVICE_ACCOUNT:
            # the broker's own counters, e.g. $SYS/broker/publish/messages/dropped
            lines.append("topic read $SYS/#")
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    certfile: str
    keyfile: str
    cafile: str | None


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    external: Listener = Listener("0.0.0.0", 8883)
    internal: Listener | None = Listener("127.0.0.1", 1883)
    hold: timedelta = timedelta(hours=2)
    assume_interval: timedelta = timedelta(seconds=10)
    data_dir: str = "/var/lib/mosquitto/"
    install_dir: str | None = None  # where the files will live on the broker host (default: --out)
    hostnames: tuple[str, ...] = ()
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    service_host: str | None = None  # how hazardwatch reaches the broker (default: the internal listener)


def conf_text(site: Site, opts: BrokerOptions, limits: QueueLimits, install_dir: str, tls: TlsFiles) -> str:
    d = install_dir.rstrip("/")
    data = opts.data_dir if opts.data_dir.endswith("/") else opts.data_dir + "/"
    internal = (
        f"""# hazardwatch's own connection: loopback or a private network, plain MQTT, still with a password.
listener {opts.internal.port} {opts.internal.host}
"""
        if opts.internal
        else ""
    )
    cafile = f"cafile {tls.cafile}\n" if tls.cafile else ""
    return f"""\
# Mosquitto 2 configuration for {site.site.name}, generated by `hazardwatch deploy mosquitto`.
# Regenerate it from the site file rather than editing it; see docs/operations.en.md.
#
# Gateways connect with TLS on {opts.external} and the account of their enterprise (credentials.tsv);
# each may publish only under {site.mqtt.prefix}/{{its enterprise code}}/#. Anonymous clients are refused.

per_listener_settings false
allow_anonymous false
password_file {d}/passwd
acl_file {d}/acl

{internal}
# Gateways: TLS only (a plain-MQTT client cannot connect here).
listener {opts.external.port} {opts.external.host}
certfile {tls.certfile}
keyfile {tls.keyfile}
{cafile}tls_version tlsv1.2

# Sessions and their queues survive a broker restart.
persistence true
persistence_location {data}
autosave_interval 30

# hazardwatch's sessions are persistent (clean session off, stable client ids: the live one and
# <id>-backfill for re-sent history): keep them a week, so a long outage of the service still finds
# its queues.
persistent_client_expiration 7d

# Queue per client (each of hazardwatch's two sessions) while hazardwatch is away. Mosquitto's default
# of 1,000 messages silently drops the rest.
# Sized for {limits.sensors} sensors ≈ {limits.readings_per_s:.1f} readings/s held for \
{format_duration(limits.hold)} (× {QUEUE_MARGIN}), one reading per message at worst:
# a full queue takes roughly {limits.memory_estimate / 2**20:.0f} MiB of broker memory.
max_queued_messages {limits.messages}
max_queued_bytes {limits.bytes}

# hazardwatch acknowledges a message only after its readings are committed: the in-flight window is
# its write batch. Bounded, so that while its database is down the broker holds the backlog.
max_inflight_messages 10000

# Larger than hazardwatch's own payload limit (256 KiB), so an oversize message reaches the service
# and is rejected with a reason instead of the broker silently disconnecting the gateway.
max_packet_size 1048576

set_tcp_nodelay true

log_dest stderr
log_type error
log_type warning
log_type notice
connection_messages true
"""


def read_credentials(path: Path) -> dict[str, str]:
    """Passwords issued by an earlier run (``credentials.tsv``), so regenerating keeps them."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) >= 2:
            out[parts[0]] = parts[1]
    return out


def credentials_text(accounts: Iterable[Account]) -> str:
    lines = ["# account\tpassword\tmay publish under\tmay subscribe to\twho"]
    for a in accounts:
        lines.append(f"{a.name}\t{a.password}\t{a.publishes or '-'}\t{a.reads or '-'}\t{a.note}")
    return "\n".join(lines) + "\n"


def self_signed(hostnames: Iterable[str], days: int = 825) -> tuple[bytes, bytes, bytes, bytes]:
    """A CA and a server certificate it signs, for trials: (ca_cert, ca_key, cert, key), PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = list(dict.fromkeys(hostnames))
    if not names:
        raise DeployError("a self-signed certificate needs at least one --hostname")
    now = dt.datetime.now(dt.UTC)

    def pem_key(k: rsa.RSAPrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hazardwatch trial CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return (ca.public_bytes(serialization.Encoding.PEM), pem_key(ca_key),
            cert.public_bytes(serialization.Encoding.PEM), pem_key(key))


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """What ``write_broker`` wrote, for the command's summary."""

    out: Path
    accounts: list[Account]
    new_accounts: list[str]
    limits: QueueLimits
    tls: TlsFiles
    self_signed: bool


def _write(path: Path, text: str | bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def service_url(account: Account, opts: BrokerOptions) -> str:
    """``HAZARDWATCH_MQTT_URL`` for hazardwatch's own account on the internal (or external) listener."""
    cred = f"{quote(account.name, safe='')}:{quote(account.password, safe='')}"
    if opts.internal is not None:
        host = opts.internal.host
        if opts.service_host:
            host = opts.service_host
        elif host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"mqtt://{cred}@{host}:{opts.internal.port}"
    host = opts.service_host or (opts.hostnames[0] if opts.hostnames else "127.0.0.1")
    return f"mqtts://{cred}@{host}:{opts.external.port}"


def write_broker(site: Site, out: Path, opts: BrokerOptions) -> BrokerFiles:
    """Write the broker's files into ``out`` (created if needed); see the module docstring."""
    if (opts.cert is None) != (opts.key is None):
        raise DeployError("give both --cert and --key (the operator's certificate), or neither (self-signed)")
    limits = queue_limits(site, opts.hold, opts.assume_interval)
    out.mkdir(parents=True, exist_ok=True)
    install = opts.install_dir or str(out.resolve())
    previous = read_credentials(out / "credentials.tsv")
    accounts = plan_accounts(site, previous)
    new = [a.name for a in accounts if a.name not in previous]

    if opts.cert is not None and opts.key is not None:
        tls = TlsFiles(opts.cert, opts.key, opts.ca)
        generated = False
    else:
        certs = out / "certs"
        if not (certs / "server.crt").exists() or not (certs / "server.key").exists():
            ca_pem, ca_key, cert, key = self_signed(opts.hostnames or ("localhost", "127.0.0.1"))
            _write(certs / "ca.crt", ca_pem, 0o644)
            _write(certs / "ca.key", ca_key, 0o600)
            _write(certs / "server.crt", cert, 0o644)
            _write(certs / "server.key", key, 0o640)
        base = install.rstrip("/")
        tls = TlsFiles(f"{base}/certs/server.crt", f"{base}/certs/server.key", f"{base}/certs/ca.crt")
        generated = True

    _write(out / "mosquitto.conf", conf_text(site, opts, limits, install, tls), 0o644)
    _write(out / "passwd", "\n".join(passwd_line(a.name, a.password) for a in accounts) + "\n", 0o640)
    _write(out / "acl", acl_text(accounts), 0o644)
    _write(out / "credentials.tsv", credentials_text(accounts), 0o600)
    svc = next(a for a in accounts if a.name == SERVICE_ACCOUNT)
    _write(out / "hazardwatch.env", f"HAZARDWATCH_MQTT_URL={service_url(svc, opts)}\n", 0o600)
    return BrokerFiles(out, accounts, new, limits, tls, generated)
