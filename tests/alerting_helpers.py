"""Local stand-ins for the vendors' HTTP endpoints: they check requests as the vendor would,
record them, and can be told to fail (5xx, slow, rate-limited) — faults injected, nothing mocked away."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


class VendorServer:
    """``handler(method, path, query, headers, body) -> (status, json_body, extra_headers)``.

    With ``dedupe`` (the request's idempotency id, or None) it drops repeats as the contract's SMS
    gateway does: a repeated id is answered 200 and recorded with ``duplicate`` set, not delivered."""

    def __init__(self, handler: Callable[..., tuple[int, Any, dict[str, str]]],
                 dedupe: Callable[[bytes], str | None] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.delivered: set[str] = set()
        self.faults: list[str] = []  # "500", "slow", "429", "45009" … consumed one per request
        self.fail_status: int | None = None  # while set, every request is answered with this status
        self.hold = threading.Event()  # cleared: requests wait (up to a minute) until it is set again
        self.hold.set()
        self.held = 0  # requests waiting on the hold now
        self.holding: list[bytes] = []  # their bodies
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _do(self, method: str) -> None:
                u = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                req = {"method": method, "path": u.path, "query": dict(parse_qsl(u.query)),
                       "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                if not outer.hold.is_set():  # a gateway slow to answer: the request is in flight meanwhile
                    with outer.lock:
                        outer.held += 1
                        outer.holding.append(body)
                    outer.hold.wait(60)
                    with outer.lock:
                        outer.held -= 1
                        outer.holding.remove(body)
                with outer.lock:
                    fault = outer.faults.pop(0) if outer.faults else None
                    if outer.fail_status is not None:
                        fault = str(outer.fail_status)
                if fault == "slow":
                    time.sleep(6)
                if fault and fault.isdigit() and len(fault) == 3:
                    status, resp, extra = int(fault), {"error": "injected"}, {"Retry-After": "1"}
                else:
                    status, resp, extra = handler(method, u.path, req["query"], req["headers"], body, fault)
                req["status"] = status
                req["errcode"] = resp.get("errcode", 0) if isinstance(resp, dict) else 0
                req["duplicate"] = False
                if status == 200 and dedupe is not None:
                    key = dedupe(body)
                    with outer.lock:
                        req["duplicate"] = key in outer.delivered
                        if key is not None:
                            outer.delivered.add(key)
                with outer.lock:
                    outer.requests.append(req)
                raw = json.dumps(resp).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._do("GET")

            def do_POST(self) -> None:
                self._do("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def ok(self) -> list[dict[str, Any]]:
        """Requests delivered (200, WeCom errcode 0; with ``dedupe``, repeats of a delivered id left out)."""
        with self.lock:
            return [r for r in self.requests if r["status"] == 200 and not r["errcode"] and not r["duplicate"]]

    def duplicates(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["duplicate"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sms_id(body: bytes) -> str | None:
    """The contract's SMS gateway drops a repeated ``id`` (the idempotency key)."""
    try:
        return str(json.loads(body)["id"])
    except (ValueError, KeyError, TypeError):
        return None


def sms_gateway(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
                fault: str | None) -> tuple[int, Any, dict[str, str]]:
    """The contract's HTTP SMS gateway: POST {"phone", "text", "id"}."""
    doc = json.loads(body)
    if method != "POST" or set(doc) != {"phone", "text", "id"} or not doc["phone"].isdigit() or not doc["text"]:
        return 400, {"error": "bad request"}, {}
    return 200, {"ok": True}, {}


def wecom_robot(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
                fault: str | None) -> tuple[int, Any, dict[str, str]]:
    if path != "/cgi-bin/webhook/send" or not query.get("key"):
        return 200, {"errcode": 93000, "errmsg": "invalid webhook url"}, {}
    if fault == "45009":
        return 200, {"errcode": 45009, "errmsg": "api freq out of limit"}, {}
    doc = json.loads(body)
    if doc.get("msgtype") != "markdown" or not doc.get("markdown", {}).get("content"):
        return 200, {"errcode": 40008, "errmsg": "invalid message type"}, {}
    return 200, {"errcode": 0, "errmsg": "ok"}, {}
