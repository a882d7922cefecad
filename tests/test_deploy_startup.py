"""Friendly failures at start: an unreachable database or broker is one line with its address
(never a password) and what to check, retried visibly, and a non-zero exit after a bounded time
with no traceback; the example site file passes check-config as shipped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hazardwatch.cli import main as cli
from hazardwatch.preflight import StartupError, preflight
from park.db.pool import open_pool
from park.errors import Unavailable
from park.settings import EnvSettings, load_settings
from park.sitefile import parse_site
from tests.deploy_helpers import generate, run_mosquitto, secured_broker
from tests.service_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
SITE = """\
site: {name: 启动测试园区}
districts:
  - code: D1
    name: 一区
    towns:
      - code: T1
        name: 一镇
        enterprises:
          - code: E001
            name: 一号化工
            sensors: [{tag: AT-2001, kind: gas_toxic, gas: H2S}]
"""
DB_SECRET, MQTT_SECRET = "db-Pa55-word-xyz", "mqtt-Pa55-word-xyz"


def hazardwatch(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "site.yaml").write_text(SITE, encoding="utf-8")
    full = {k: v for k, v in os.environ.items() if not k.startswith("HAZARDWATCH_")} | env
    return subprocess.run([sys.executable, "-m", "hazardwatch", "run", "--config", str(tmp_path / "site.yaml"),
                           *args], env=full, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def assert_friendly(r: subprocess.CompletedProcess[str], address: str, secret: str) -> None:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "Error:" not in r.stderr, r.stderr
    assert secret not in r.stderr + r.stdout
    retries = [x for x in lines if x.startswith("…") and address in x]
    assert len(retries) >= 2, f"no visible retries:\n{r.stderr}"
    assert lines[-1].startswith("✗ ") and address in lines[-1] and "check" in lines[-1], lines[-1]
    assert "did not start" in lines[-1]


def test_unreachable_database_is_one_line_retried_and_a_bounded_exit(tmp_path: Path) -> None:
    port = free_port()
    r = hazardwatch(tmp_path, {"HAZARDWATCH_DATABASE_URL": f"postgresql://hw:{DB_SECRET}@127.0.0.1:{port}/park"},
                    "--start-timeout", "3s")
    assert_friendly(r, f"postgresql://hw@127.0.0.1:{port}/park", DB_SECRET)
    assert "check that PostgreSQL runs" in r.stderr


def test_unreachable_broker_is_one_line_retried_and_a_bounded_exit(
        tmp_path: Path, make_database: Callable[..., str]) -> None:
    port = free_port()
    r = hazardwatch(tmp_path, {"HAZARDWATCH_DATABASE_URL": make_database("postgres", "hwdocs"),
                               "HAZARDWATCH_MQTT_URL": f"mqtt://hazardwatch:{MQTT_SECRET}@127.0.0.1:{port}"},
                    "--start-timeout", "3s")
    assert_friendly(r, f"mqtt://hazardwatch@127.0.0.1:{port}", MQTT_SECRET)
    assert "check that Mosquitto runs" in r.stderr


def test_broker_refusing_the_account_says_to_check_the_credentials(
        tmp_path: Path, make_database: Callable[..., str]) -> None:
    with secured_broker(tmp_path / "broker", SITE) as b:
        r = hazardwatch(tmp_path, {"HAZARDWATCH_DATABASE_URL": make_database("postgres", "hwdocs"),
                                   "HAZARDWATCH_MQTT_URL": f"mqtt://hazardwatch:{MQTT_SECRET}@127.0.0.1:{b.internal}"},
                        "--start-timeout", "2s")
    assert_friendly(r, f"mqtt://hazardwatch@127.0.0.1:{b.internal}", MQTT_SECRET)
    assert "user name and password" in r.stderr


def test_start_waits_for_a_broker_that_comes_up_while_it_retries(tmp_path: Path) -> None:
    """The broker starts only once the first failure was reported: preflight then goes on."""
    internal, external = free_port(), free_port()
    conf = generate(tmp_path, SITE, internal, external)
    pw = (conf / "credentials.tsv").read_text().split("\nhazardwatch\t", 1)[1].split("\t", 1)[0]
    settings = load_settings(None, EnvSettings(mqtt_url=f"mqtt://hazardwatch:{pw}@127.0.0.1:{internal}"))
    lines: list[str] = []
    with contextlib.ExitStack() as stack:

        def say(line: str) -> None:
            lines.append(line)
            if len(lines) == 1:
                stack.enter_context(run_mosquitto(conf / "mosquitto.conf", [internal, external], tmp_path / "m.log"))

        asyncio.run(preflight(settings, 60, say))
    assert lines[0].startswith("… MQTT broker") and f"127.0.0.1:{internal}" in lines[0]
    assert lines[-1].startswith("✓ MQTT broker") and pw not in "".join(lines)


def test_preflight_gives_up_with_a_startup_error() -> None:
    port = free_port()
    settings = load_settings(None, EnvSettings(database_url=f"postgresql://u:{DB_SECRET}@127.0.0.1:{port}/x"))
    said: list[str] = []
    with pytest.raises(StartupError) as e:
        asyncio.run(preflight(settings, 1.5, said.append))
    assert f"127.0.0.1:{port}" in str(e.value) and DB_SECRET not in str(e.value) + "".join(said)


def test_pool_that_cannot_open_says_where_not_a_bare_pool_timeout() -> None:
    port = free_port()

    async def go() -> None:
        async with open_pool(f"postgresql://u:{DB_SECRET}@127.0.0.1:{port}/x", open_timeout=1):
            pass

    with pytest.raises(Unavailable) as e:
        asyncio.run(go())
    assert f"postgresql://u@127.0.0.1:{port}/x" in str(e.value)
    assert DB_SECRET not in str(e.value)


def test_example_site_file_passes_check_config_as_shipped() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HW_", "HAZARDWATCH_"))}
    r = subprocess.run([sys.executable, "-m", "hazardwatch", "check-config", "deploy/site.example.yaml"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout


def test_env_defaults_in_site_files() -> None:
    text = SITE + 'channels:\n  sms: {provider: http, url: "http://x/send", token: "${HW_T:-demo-token}"}\n'
    assert parse_site(text, environ={}).channels.sms.token.get_secret_value() == "demo-token"  # type: ignore[union-attr]
    got = parse_site(text, environ={"HW_T": "real"}).channels.sms.token.get_secret_value()  # type: ignore[union-attr]
    assert got == "real"
    from park.errors import SiteFileError

    with pytest.raises(SiteFileError, match="HW_T is not set"):
        parse_site(text.replace("${HW_T:-demo-token}", "${HW_T}"), environ={})
    assert cli(["check-config", str(REPO / "deploy" / "site.example.yaml")]) == 0


def test_tls_url_on_a_plain_port_says_so(tmp_path: Path) -> None:
    with secured_broker(tmp_path / "broker", SITE) as b:
        settings = load_settings(None, EnvSettings(mqtt_url=f"mqtts://hazardwatch:{MQTT_SECRET}@127.0.0.1:{b.internal}"))
        said: list[str] = []
        with pytest.raises(StartupError) as e:
            asyncio.run(preflight(settings, 1.0, said.append))
    assert "mqtts://hazardwatch@127.0.0.1" in str(e.value) and "mqtt://" in str(e.value)
    assert MQTT_SECRET not in str(e.value) + "".join(said)


def test_a_reachable_database_and_broker_start_the_service_and_sigterm_stops_it(
        tmp_path: Path, make_database: Callable[..., str], mqtt_url: str, topic_prefix: str) -> None:
    (tmp_path / "site.yaml").write_text(SITE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAZARDWATCH_")} | {
        "HAZARDWATCH_DATABASE_URL": make_database("postgres", "hwdocs"), "HAZARDWATCH_MQTT_URL": mqtt_url,
        "HAZARDWATCH_MQTT_PREFIX": topic_prefix, "HAZARDWATCH_MQTT_CLIENT_ID": f"hwdocs-{topic_prefix[:9]}",
        "HAZARDWATCH_HTTP_ADDR": f"127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([sys.executable, "-m", "hazardwatch", "run", "--config", str(tmp_path / "site.yaml"),
                             "--start-timeout", "30s"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # until the service says every stage is up (or the process ends)
            lines.append(line)
            if "hazardwatch running" in line:
                break
        assert any("hazardwatch running" in x for x in lines), "".join(lines)
        proc.terminate()
        _, rest = proc.communicate(timeout=60)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines)
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "unreachable" not in text
