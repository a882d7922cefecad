"""A TCP proxy between the service and PostgreSQL that a test can cut: a database blip as the
service sees one — every open connection dropped at once, new ones refused — without stopping the
server other tests share."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit


class DbProxy:
    """Listens on a free local port and relays to ``target_url``'s host and port.

    :meth:`down` closes every relayed connection and refuses new ones until :meth:`up`. Both are
    plain thread-safe calls, usable from the event loop or a worker thread."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._parts = parts
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._down = False
        self.drops = 0  # how many times down() was called
        self.refused = 0  # connections refused while down
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="db-proxy", daemon=True).start()

    def url(self, dbname: str | None = None) -> str:
        """``target_url`` with the proxy's address (and ``dbname`` as the database, if given)."""
        auth = f"{self._parts.username}@" if self._parts.username else ""
        path = f"/{dbname}" if dbname else self._parts.path
        return urlunsplit((self._parts.scheme, f"{auth}127.0.0.1:{self.port}", path, self._parts.query, ""))

    def down(self) -> None:
        with self._lock:
            self._down = True
            self.drops += 1
            socks, self._socks = self._socks, set()
        for s in socks:
            _kill(s)

    def up(self) -> None:
        with self._lock:
            self._down = False

    @property
    def is_down(self) -> bool:
        return self._down

    def close(self) -> None:
        self._closed = True
        self.down()
        _kill(self._srv)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            with self._lock:
                refuse = self._down
                if refuse:
                    self.refused += 1
            if refuse:
                _kill(client)
                continue
            try:
                server = socket.create_connection(self._target, timeout=5)
                server.settimeout(None)
            except OSError:
                _kill(client)
                continue
            with self._lock:
                if self._down:  # cut while connecting
                    _kill(client)
                    _kill(server)
                    continue
                self._socks |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks -= {src, dst}
            _kill(src)
            _kill(dst)


def _kill(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


@contextlib.contextmanager
def db_proxy(target_url: str) -> Iterator[DbProxy]:
    p = DbProxy(target_url)
    try:
        yield p
    finally:
        p.close()
