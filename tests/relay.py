"""A TCP relay on 127.0.0.1 that a test can partition: bytes stop, nothing is closed.

    with Relay(redis_port) as relay:           # clients connect to relay.port
        relay.partition()                      # both directions stop; connections stay open
        ...
        relay.heal()                           # held bytes flow again

What a network partition or a dead NAT entry looks like to a client: sends are accepted (until
the kernel buffers fill), replies never come, no FIN, no RST. While partitioned the relay reads
nothing, so bytes wait in the kernel like unacknowledged TCP segments and arrive after the heal
if both ends still want them; a client that gave up and closed is noticed only after the heal,
as a real peer would notice it. New connections complete their handshake (the listen backlog)
but get no byte through until the heal. Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import selectors
import socket
import threading
from typing import Any

from producer.local import free_port

_CHUNK = 65536


class Relay:
    """Forward ``127.0.0.1:port`` to ``127.0.0.1:upstream_port``; ``partition``/``heal``."""

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = port or free_port()
        self._open = threading.Event()
        self._open.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.connections = 0  # accepted so far (a reconnecting client adds one)
        self._srv = socket.create_server(("127.0.0.1", self.port), backlog=128)
        self._thread = threading.Thread(target=self._serve, name=f"relay:{self.port}",
                                        daemon=True)
        self._thread.start()

    def url(self, db: int = 0, scheme: str = "redis") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{db}"

    @property
    def partitioned(self) -> bool:
        return not self._open.is_set()

    def partition(self) -> None:
        """Stop forwarding in both directions, closing nothing."""
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stop.set()
        self._open.set()
        self._srv.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            self._open.wait()  # connecting upstream is forwarding a SYN: not while partitioned
            if self._stop.is_set():
                client.close()
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._socks += [client, server]
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Copy both directions of one connection; hold everything while partitioned."""
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while not self._stop.is_set():
                self._open.wait()
                for key, _ in sel.select(timeout=0.2):
                    if not self._open.is_set():
                        break  # partitioned between select and recv: leave it in the kernel
                    data = key.fileobj.recv(_CHUNK)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass
