"""Request bodies capped before they are read, and the ops endpoints' optional protection.

:class:`BodyLimit` is plain ASGI and sits outside everything else: a declared
``Content-Length`` over the cap is answered 413 at once, without reading a byte of the body;
a chunked body is counted as it arrives and refused (413) the moment it passes the cap. So an
unauthenticated 64 MB upload costs the server nothing.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Sequence

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 64 * 1024  # every API body is a small JSON command or the acknowledgement form


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send, status: int, text: str) -> None:
        body = json.dumps({"detail": text}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope["headers"] if k == b"content-length"]
        if declared:
            try:
                n = int(declared[0])
            except ValueError:
                await self._refuse(send, 400, "malformed Content-Length")
                return
            if n > self.max_bytes:
                await self._refuse(send, 413, f"request body of {n} bytes is over the limit of {self.max_bytes} bytes")
                return
        seen = 0
        limit = self.max_bytes

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            return msg

        await self.app(scope, counted, send)


class OpsGuard:
    """Who may read ``/metrics``, ``/openapi.json`` and ``/docs``.

    Open when neither a scrape token nor networks are configured (the default, fine while the API
    listens on loopback). Otherwise a client from ``networks`` passes, and so does one presenting
    the scrape token (``Authorization: Bearer``); for the API description a valid API token too.
    """

    def __init__(self, token: str | None, networks: Sequence[str]) -> None:
        self.token = token
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    @property
    def open(self) -> bool:
        return self.token is None and not self.networks

    def from_allowed_network(self, request: Request) -> bool:
        host = request.client.host if request.client else ""
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in n for n in self.networks)

    def has_scrape_token(self, presented: str) -> bool:
        return self.token is not None and bool(presented) and hmac.compare_digest(presented.encode(),
                                                                                 self.token.encode())
