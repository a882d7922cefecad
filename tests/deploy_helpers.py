"""A private Mosquitto running the configuration `hazardwatch deploy mosquitto` generates."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hazardwatch.cli import main as cli
from hazardwatch.deploy.mosquitto import read_credentials
from tests.service_helpers import free_port


@dataclass
class SecuredBroker:
    out: Path
    internal: int
    external: int
    passwords: dict[str, str]

    @property
    def ca(self) -> str:
        return str(self.out / "certs" / "ca.crt")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def generate(d: Path, site_text: str, internal: int, external: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "site.yaml").write_text(site_text, encoding="utf-8")
    rc = cli(["deploy", "mosquitto", "--config", str(d / "site.yaml"), "--out", str(d / "conf"),
              "--internal", f"127.0.0.1:{internal}", "--external", f"127.0.0.1:{external}",
              "--hostname", "localhost", "--hostname", "127.0.0.1", "--data-dir", str(d / "data")])
    assert rc == 0
    (d / "data").mkdir(exist_ok=True)
    return d / "conf"


@contextlib.contextmanager
def run_mosquitto(conf: Path, ports: list[int], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``mosquitto -c conf`` until the ports listen; stop it afterwards.

    The test adds only `user root`: its tmp dir is not readable by the mosquitto user the broker
    would otherwise switch to.
    """
    test_conf = conf.with_name("test-" + conf.name)
    test_conf.write_text(conf.read_text() + "\nuser root\n")
    with open(log, "wb") as out:
        proc = subprocess.Popen(["mosquitto", "-c", str(test_conf)], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while not all(listening(p) for p in ports):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not start with {conf}:\n{log.read_text()}")
                time.sleep(0.05)
            yield proc
        finally:
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def secured_broker(d: Path, site_text: str) -> Iterator[SecuredBroker]:
    internal, external = free_port(), free_port()
    conf = generate(d, site_text, internal, external)
    with run_mosquitto(conf / "mosquitto.conf", [internal, external], d / "mosquitto.log"):
        yield SecuredBroker(conf, internal, external, read_credentials(conf / "credentials.tsv"))
