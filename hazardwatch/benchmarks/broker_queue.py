"""Broker memory per queued reading: what `hazardwatch deploy mosquitto` sizes its queue limits with.

    python -m hazardwatch.benchmarks.broker_queue [--messages 200000]

Starts a private Mosquitto (from PATH) on a free port in a temporary folder, parks a persistent
QoS 1 session (hazardwatch's, while it is away), publishes single-point readings to it, and prints
the broker's resident memory growth per queued message. Stops the broker at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(messages: int) -> None:
    port = _free_port()
    with tempfile.TemporaryDirectory() as d:
        conf = Path(d) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"max_queued_messages {messages + 1}\nmax_queued_bytes 0\nmax_inflight_messages 10000\n"
                        "user root\n")
        broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-service", clean_session=False)
            sub.connect("127.0.0.1", port)
            sub.loop_start()
            sub.subscribe("hw/v1/#", qos=1)
            time.sleep(0.5)
            sub.disconnect()
            sub.loop_stop()
            before = _rss_kb(broker.pid)
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-gateways")
            pub.max_inflight_messages_set(2000)
            pub.max_queued_messages_set(0)  # unbounded on the client: the broker is what is measured
            pub.connect("127.0.0.1", port)
            pub.loop_start()
            payload = ""
            unacked: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()
            for i in range(messages):
                payload = json.dumps({"value": 12.345 + i % 100, "ts": 1763856000123 + i, "q": 0})
                unacked.append(pub.publish(f"hw/v1/E{i % 100:03d}/point/AT-{i % 1000:04d}", payload, qos=1))
                while len(unacked) > 30_000:  # message ids wrap at 65,535: keep fewer than that outstanding
                    unacked.popleft().wait_for_publish(120)
                if i % 50_000 == 0:
                    print(f"… {i:,} published", flush=True)
            while unacked:
                unacked.popleft().wait_for_publish(120)
            pub.disconnect()
            pub.loop_stop()
            time.sleep(1)
            after = _rss_kb(broker.pid)
            # the session resumes: every reading must have been queued, none dropped
            got = 0
            done = threading.Event()

            def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
                nonlocal got
                got += 1
                if got == messages:
                    done.set()

            sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-service", clean_session=False)
            sub.on_message = on_message
            sub.connect("127.0.0.1", port)
            sub.loop_start()
            done.wait(120)
            sub.disconnect()
            sub.loop_stop()
        finally:
            broker.terminate()
            broker.wait(10)
    version = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"{version}: {messages:,} single-point readings ({len(payload)}-byte payload, topic ~22 bytes) queued for "
          f"an offline persistent session: RSS {before:,} kB → {after:,} kB = "
          f"{(after - before) * 1024 / messages:.0f} bytes per queued message; {got:,} delivered when the session "
          "resumed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=200_000)
    measure(p.parse_args().messages)


if __name__ == "__main__":
    main()
