"""Credentials inside connection URLs: a password holding ``#``, ``/``, ``@``, ``:`` or ``?`` works as
typed (in the URL or in the site file's ``mqtt:`` section), reaches libpq exactly, and is never
shown — not in ``repr``, ``safe_dict``, nor in the error for a malformed URL."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from park.errors import SettingsError
from park.settings import EnvSettings, MqttTarget, load_settings, mask_url
from park.sitefile import parse_site
from tests.site_helpers import MINIMAL_SITE

PASSWORDS = ["p#ss", "a/b", "x@y", "u:v", "q?r", "p#ss/w@rd:x?y", "%zz", "@@", "end@", "ünï/cödé"]


@pytest.mark.parametrize("pw", PASSWORDS)
def test_mqtt_password_in_the_url_as_typed(pw: str) -> None:
    t = MqttTarget.parse(f"mqtts://gw:{pw}@broker.example:8883")
    assert (t.host, t.port, t.tls, t.username) == ("broker.example", 8883, True, "gw")
    assert t.password is not None and t.password.get_secret_value() == pw
    assert pw not in repr(t)


@pytest.mark.parametrize("pw", PASSWORDS)
def test_mqtt_password_from_the_site_file(pw: str) -> None:
    yaml_pw = pw.replace("\\", "\\\\").replace('"', '\\"')
    site = parse_site(MINIMAL_SITE + f'mqtt: {{url: "mqtt://broker.example:1883", username: "gw 1", '
                                     f'password: "{yaml_pw}"}}\n', environ={})
    s = load_settings(site, EnvSettings())
    t = s.mqtt
    assert (t.host, t.port, t.username) == ("broker.example", 1883, "gw 1")
    assert t.password is not None and t.password.get_secret_value() == pw
    assert pw not in repr(s) + str(s.safe_dict())


@pytest.mark.parametrize("pw", PASSWORDS)
def test_database_password_reaches_libpq_exactly(pw: str) -> None:
    s = load_settings(None, EnvSettings(database_url=f"postgresql://hw:{pw}@db.example:5433/hw?sslmode=require"))
    assert s.database_url is not None
    parsed = conninfo_to_dict(s.database_url.get_secret_value())  # libpq's own reading of the URL
    assert (parsed["user"], parsed["password"], parsed["host"], parsed["port"], parsed["dbname"],
            parsed["sslmode"]) == ("hw", pw, "db.example", "5433", "hw", "require")
    assert pw not in str(s.safe_dict()) + repr(s)
    assert s.safe_dict()["database"] == "postgresql://hw:***@db.example:5433/hw?sslmode=require"


def test_percent_encoded_passwords_still_mean_what_they_say() -> None:
    assert MqttTarget.parse("mqtt://gw:p%23ss@h:1").password.get_secret_value() == "p#ss"  # type: ignore[union-attr]
    s = load_settings(None, EnvSettings(database_url="postgresql://hw:p%2Fss@db/hw"))
    assert conninfo_to_dict(s.database_url.get_secret_value())["password"] == "p/ss"  # type: ignore[union-attr]


def test_urls_without_credentials_and_conninfo_strings_pass_unchanged() -> None:
    s = load_settings(None, EnvSettings(database_url="postgresql://postgres@127.0.0.1:5432/postgres"))
    assert s.database_url is not None
    assert s.database_url.get_secret_value() == "postgresql://postgres@127.0.0.1:5432/postgres"
    kv = "host=db.example dbname=hw user=hw password=s#cret"
    s = load_settings(None, EnvSettings(database_url=kv))
    assert s.database_url is not None and s.database_url.get_secret_value() == kv
    assert "s#cret" not in str(s.safe_dict())


@pytest.mark.parametrize("url", ["mqtt://gw:s3cr#t@host:notaport", "http://gw:s3cr#t@host:1",
                                 "mqtt://gw:s3cr#t@/x", "broker:s3cr#t@1883"])
def test_errors_for_bad_urls_never_show_the_password(url: str) -> None:
    with pytest.raises(SettingsError) as e:
        MqttTarget.parse(url)
    assert "s3cr#t" not in str(e.value) and "s3cr" not in str(e.value)


def test_a_bad_database_scheme_is_refused_without_the_password() -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(None, EnvSettings(database_url="mysql://hw:s3cr#t@db/hw"))
    assert "s3cr" not in str(e.value) and "postgresql://" in str(e.value)


def test_mask_url() -> None:
    assert mask_url("mqtt://gw:p#ss/w@rd@h:1883") == "mqtt://gw:***@h:1883"
    assert mask_url("mqtt://h:1883") == "mqtt://h:1883"
