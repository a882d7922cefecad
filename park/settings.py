"""Connection settings (CONTRACT §6): environment first, then the site file, then defaults.

Built once in ``main`` and passed down. Secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from park.errors import SettingsError
from park.site import Site

DEFAULT_HTTP_ADDR = "127.0.0.1:8080"


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


@dataclass(frozen=True, slots=True)
class MqttTarget:
    host: str
    port: int
    tls: bool
    username: str | None
    password: SecretStr | None

    @classmethod
    def parse(cls, url: str) -> MqttTarget:
        u = urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise SettingsError("HAZARDWATCH_MQTT_URL", f"{url!r}: use mqtt://host:port or mqtts://host:port")
        tls = u.scheme in ("mqtts", "ssl")
        if not u.hostname:
            raise SettingsError("HAZARDWATCH_MQTT_URL", f"{url!r} has no host")
        try:
            port = u.port or (8883 if tls else 1883)
        except ValueError:
            raise SettingsError("HAZARDWATCH_MQTT_URL", f"{url!r} has a bad port") from None
        pw = SecretStr(unquote(u.password)) if u.password else None
        return cls(u.hostname, port, tls, unquote(u.username) if u.username else None, pw)


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

    @property
    def mqtt(self) -> MqttTarget:
        return MqttTarget.parse(self.mqtt_url)

    def safe_dict(self) -> dict[str, str]:
        """For logs and ``check-config``: secrets masked."""
        db = self.database_url.get_secret_value() if self.database_url else "(not set)"
        return {
            "database": _mask_url(db),
            "mqtt": _mask_url(self.mqtt_url),
            "mqtt_client_id": self.mqtt_client_id,
            "mqtt_prefix": self.mqtt_prefix,
            "http": f"{self.http_host}:{self.http_port}",
            "public_url": self.public_url,
        }


def load_settings(site: Site | None = None, env: EnvSettings | None = None) -> Settings:
    """Merge environment over site file over defaults; raise SettingsError on a bad value."""
    env = env or EnvSettings()
    db = env.database_url or (site.database.url if site else None)
    mqtt_url = env.mqtt_url or (site.mqtt.url if site else None) or "mqtt://127.0.0.1:1883"
    if site and site.mqtt.username and "@" not in mqtt_url:
        pw = site.mqtt.password.get_secret_value() if site.mqtt.password else ""
        scheme, rest = mqtt_url.split("://", 1)
        mqtt_url = f"{scheme}://{site.mqtt.username}:{pw}@{rest}"
    MqttTarget.parse(mqtt_url)
    client_id = env.mqtt_client_id or (site.mqtt.client_id if site else None) or default_client_id()
    prefix = (env.mqtt_prefix or (site.mqtt.prefix if site else None) or "hw/v1").strip("/")
    addr = env.http_addr or (site.http.addr if site else None) or DEFAULT_HTTP_ADDR
    host, port = parse_addr(addr)
    public = env.public_url or (site.http.public_url if site else None) or f"http://{host}:{port}"
    return Settings(db, mqtt_url, client_id, prefix, host, port, public.rstrip("/"), env.link_secret, env.data_dir)


def default_client_id() -> str:
    """Stable per host, so a restart resumes the same persistent broker session."""
    return f"hazardwatch-{socket.gethostname()}"[:64]


def parse_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SettingsError("HAZARDWATCH_HTTP_ADDR", f"{addr!r}: write host:port, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def _mask_url(url: str) -> str:
    u = urlsplit(url)
    if u.password:
        return url.replace(f":{u.password}@", ":***@", 1)
    return url
