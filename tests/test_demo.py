"""``hazardwatch demo`` from the installed package with nothing configured: embedded broker and database,
a red alarm on the board within a minute, and Ctrl-C leaves nothing running — also after a ``kill -9``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from hazardwatch.commands.demo import prune_stale_handles
from tests.service_helpers import free_port


def _start(data: Path) -> tuple[subprocess.Popen[str], int, float, str, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAZARDWATCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    port = free_port()
    hw = Path(sys.executable).with_name("hazardwatch")
    started = time.monotonic()
    proc = subprocess.Popen([str(hw), "demo", "--data-dir", str(data), "--http-addr", f"127.0.0.1:{port}",
                             "--mqtt-port", str(free_port())],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out.append(line)
        if "Ctrl-C stops" in line:
            break
    text = "".join(out)
    assert "✓ hazardwatch demo running" in text, text[-3000:]
    token = re.search(r"\?token=(hw_[\w-]+)", text).group(1)  # type: ignore[union-attr]
    return proc, port, started, token, out


def _postgres_of(pgdata: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if "postgres" in (p.info["name"] or "") and str(pgdata) in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_demo_red_within_a_minute_and_clean_stop_after_a_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    first, *_ = _start(data)
    first.kill()  # kill -9: its handle stays in the embedded PostgreSQL's list, the server keeps running
    first.wait(30)
    assert first.stdout is not None
    first.stdout.close()
    assert _postgres_of(data / "pg"), "the embedded PostgreSQL outlives a kill -9 (what the fix must cope with)"

    proc, port, started, token, out = _start(data)
    assert proc.stdout is not None
    try:
        # the quiet start: nothing that reads like an error before the banner
        banner = "".join(out)
        assert "WARNING" not in banner and "ERROR" not in banner and "Traceback" not in banner, banner
        red = None
        while time.monotonic() - started < 60 and red is None:
            r = httpx.get(f"http://127.0.0.1:{port}/api/v1/alarms", headers={"Authorization": f"Bearer {token}"})
            red = next((a for a in r.json() if a["severity"] == "red"), None)
            if red is None:
                time.sleep(1)
        assert red is not None, "a red alarm within 60 s of starting the demo"
        print(f"first red after {time.monotonic() - started:.1f} s: {red['text']}")
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
    left = _postgres_of(data / "pg")
    for p in left:  # never leave a server behind, even when the test fails
        p.terminate()
    assert rc == 0, rest[-2000:]
    assert "hazardwatch stopped" in rest
    assert left == [], "no PostgreSQL process left behind"
    assert not (data / "pg" / "postmaster.pid").exists(), "the embedded PostgreSQL was stopped"


def test_stale_handles_of_dead_processes_are_forgotten(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        (tmp_path / ".handle_pids.json").write_text(f"[{dead.pid}, {live.pid}]")
        assert prune_stale_handles(tmp_path) == [dead.pid]
        assert (tmp_path / ".handle_pids.json").read_text() == f"[{live.pid}]"
    finally:
        live.communicate(b"")
