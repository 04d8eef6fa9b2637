"""A counting loopback proxy in front of the S3 server: every request the code under test sends
(method, key, Range header, status, bytes each way) is recorded, then forwarded unchanged.

Point ``AWS_ENDPOINT_URL`` at ``CountingProxy.endpoint`` instead of the server's. Tests use it
to prove reads are ranged (no full download); ``benchmarks/s3.py`` to count requests per shard
and bytes moved.
"""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from tests.objstore import S3Server

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    range: str
    status: int
    sent: int
    received: int

    @property
    def kind(self) -> str:
        """GET, HEAD, PUT, DELETE, POST or LIST (a GET of a bucket listing)."""
        if self.method == "GET" and ("list-type" in self.query or self.path.count("/") <= 1):
            return "LIST"
        return self.method


class CountingProxy:
    """``ThreadingHTTPServer`` on 127.0.0.1 forwarding to ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def record(self, r: Request) -> None:
        with self._lock:
            self.requests.append(r)

    def take(self) -> list[Request]:
        """The requests recorded since the last ``take`` (and forget them)."""
        with self._lock:
            out, self.requests = self.requests, []
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def summary(requests: list[Request]) -> dict[str, int]:
    """Counts per kind and the bytes each way: ``{"GET": 3, ..., "bytes_up", "bytes_down"}``."""
    out: dict[str, int] = {}
    for r in requests:
        out[r.kind] = out.get(r.kind, 0) + 1
    out["bytes_up"] = sum(r.sent for r in requests)
    out["bytes_down"] = sum(r.received for r in requests)
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: CountingProxy
    _local = threading.local()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass

    def _forward(self) -> None:
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):  # a kept-alive upstream connection may have been closed
            conn = self._conn(fresh=attempt == 2)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, ConnectionError):
                if attempt == 2:
                    raise
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and k.lower() not in ("content-length", "server", "date"):
                self.send_header(k, v)
        length = resp.getheader("Content-Length")
        self.send_header("Content-Length", length if self.command == "HEAD" and length
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        parts = urlsplit(self.path)
        self.owner.record(Request(self.command, parts.path, parts.query,
                                  self.headers.get("Range", ""), resp.status,
                                  len(body or b""), len(data)))

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else (b"" if self.command in ("PUT", "POST") else None)

    def _conn(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
            self._local.conn = conn
        return conn

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


@contextmanager
def counted_s3(workdir: Path) -> Iterator[tuple[S3Server, CountingProxy]]:
    """A moto server behind a ``CountingProxy``; this process's ``AWS_*`` point at the proxy
    for the duration (pyarrow's filesystems cached by ``storage.objstore`` are dropped)."""
    from storage import objstore

    srv = S3Server(workdir).start()
    proxy = CountingProxy(srv.endpoint)
    env = {**srv.env(), "AWS_ENDPOINT_URL": proxy.endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    objstore._object_fs.cache_clear()
    try:
        yield srv, proxy
    finally:
        objstore._object_fs.cache_clear()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proxy.stop()
        srv.stop()
