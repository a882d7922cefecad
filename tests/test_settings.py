"""Connection settings (docs/contract.md §6): the environment wins over the site file; secrets are never shown."""

from __future__ import annotations

import pytest

from park.errors import SettingsError
from park.settings import EnvSettings, MqttTarget, load_settings
from park.sitefile import parse_site
from tests.site_helpers import MINIMAL_SITE

WITH_SECTIONS = MINIMAL_SITE + """\
database: {url: "postgresql://hw:file-secret@db.example/hw"}
mqtt: {url: "mqtts://broker.example:8883", client_id: from-file, username: gw, password: "mq-secret"}
http: {addr: "0.0.0.0:9090", public_url: "https://hw.example/"}
"""


def test_site_file_sections_are_used_when_the_environment_is_silent() -> None:
    s = load_settings(parse_site(WITH_SECTIONS, environ={}), EnvSettings())
    assert s.database_url is not None and "db.example" in s.database_url.get_secret_value()
    t = s.mqtt
    assert (t.host, t.port, t.tls, t.username) == ("broker.example", 8883, True, "gw")
    assert t.password is not None and t.password.get_secret_value() == "mq-secret"
    assert (s.mqtt_client_id, s.http_host, s.http_port, s.public_url) == ("from-file", "0.0.0.0", 9090,
                                                                         "https://hw.example")


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAZARDWATCH_DATABASE_URL", "postgresql://env@127.0.0.1/envdb")
    monkeypatch.setenv("HAZARDWATCH_MQTT_URL", "mqtt://127.0.0.1:1999")
    monkeypatch.setenv("HAZARDWATCH_HTTP_ADDR", "127.0.0.1:7070")
    monkeypatch.setenv("HAZARDWATCH_MQTT_CLIENT_ID", "from-env")
    s = load_settings(parse_site(WITH_SECTIONS, environ={}))
    assert s.database_url is not None and s.database_url.get_secret_value().endswith("/envdb")
    assert (s.mqtt.host, s.mqtt.port, s.mqtt_client_id, s.http_port) == ("127.0.0.1", 1999, "from-env", 7070)


def test_defaults_and_a_stable_client_id() -> None:
    s = load_settings(None, EnvSettings())
    assert (s.http_host, s.http_port, s.mqtt_prefix) == ("127.0.0.1", 8080, "hw/v1")
    assert s.mqtt_client_id == load_settings(None, EnvSettings()).mqtt_client_id  # a restart resumes the session


def test_secrets_are_masked() -> None:
    s = load_settings(parse_site(WITH_SECTIONS, environ={}), EnvSettings())
    shown = str(s.safe_dict()) + repr(s)
    assert "file-secret" not in shown and "mq-secret" not in shown


@pytest.mark.parametrize("url", ["http://x:1", "mqtt://", "mqtt://host:notaport", "broker:1883"])
def test_bad_mqtt_urls_say_what_to_write(url: str) -> None:
    with pytest.raises(SettingsError, match="mqtt"):
        MqttTarget.parse(url)


def test_bad_http_addr() -> None:
    with pytest.raises(SettingsError, match="host:port"):
        load_settings(None, EnvSettings(http_addr="8080"))


@pytest.mark.parametrize(("var", "field", "text", "want"), [
    ("HAZARDWATCH_LEASE_TTL", "lease_ttl", None, 10.0), ("HAZARDWATCH_LEASE_TTL", "lease_ttl", "3s", 3.0),
    ("HAZARDWATCH_SYNC_COMMIT_WAIT", "sync_commit_wait", None, 3.0),
    ("HAZARDWATCH_SYNC_COMMIT_WAIT", "sync_commit_wait", "500ms", 0.5),
    ("HAZARDWATCH_BACKFILL", "backfill", "2d", 172800.0),
])
def test_durations_from_the_environment(var: str, field: str, text: str | None, want: float) -> None:
    got = getattr(load_settings(None, EnvSettings(**({field: text} if text else {}))), field)
    assert (got.total_seconds() if field == "backfill" else got) == want


@pytest.mark.parametrize(("var", "field", "text", "says"), [
    ("HAZARDWATCH_LEASE_TTL", "lease_ttl", "500ms", "at least 1s"),
    ("HAZARDWATCH_SYNC_COMMIT_WAIT", "sync_commit_wait", "0s", "longer than zero"),
    ("HAZARDWATCH_SYNC_COMMIT_WAIT", "sync_commit_wait", "soon", ""),
    ("HAZARDWATCH_BACKFILL", "backfill", "-1d", ""),
])
def test_bad_durations_name_their_variable(var: str, field: str, text: str, says: str) -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(None, EnvSettings(**{field: text}))
    assert var in str(e.value) and says in str(e.value)
