"""``hazardwatch demo`` from the installed package with nothing configured: embedded broker and database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from tests.service_helpers import free_port


def test_demo_runs_with_nothing_configured_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAZARDWATCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    port = free_port()
    hw = Path(sys.executable).with_name("hazardwatch")
    proc = subprocess.Popen([str(hw), "demo", "--data-dir", str(tmp_path / "demo"), "--http-addr",
                             f"127.0.0.1:{port}", "--mqtt-port", str(free_port()), "--scenario-every", "4s"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if "  site file" in line:
                break
        text = "".join(out)
        assert "✓ hazardwatch demo running" in text, text[-3000:]
        token = re.search(r"\?token=(hw_[\w-]+)", text).group(1)  # type: ignore[union-attr]
        db = re.search(r"database\s+(postgresql://\S+)", text).group(1)  # type: ignore[union-attr]
        readings = alarms = 0
        while time.monotonic() < deadline and not (readings and alarms):
            time.sleep(1)
            with psycopg.connect(db) as conn:
                readings = conn.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
                alarms = conn.execute("SELECT count(*) FROM alarms").fetchone()[0]  # type: ignore[index]
        assert readings > 0 and alarms > 0, (readings, alarms)
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/alarms", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and len(r.json()) >= 1
        assert "园区预警值班台" in httpx.get(f"http://127.0.0.1:{port}/").text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
            rest = proc.stdout.read()
            proc.stdout.close()
    assert rc == 0, rest[-2000:]
    assert "hazardwatch stopped" in rest
    assert not (tmp_path / "demo" / "pg" / "postmaster.pid").exists(), "the embedded PostgreSQL was stopped"
