"""A real S3-protocol server for the tests: moto's server mode on 127.0.0.1 and a free port.

Never a fake client: the code under test talks HTTP to it through pyarrow/boto3, exactly as it
would to MinIO or a cloud. ``S3Server.env()`` is what a producer or worker process needs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.procs import free_port


class S3Server:
    """``python -m moto.server`` as a subprocess; ``stop()``/``start()`` keep the same port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing-key-id",
                "AWS_SECRET_ACCESS_KEY": "testing-secret-key", "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self) -> S3Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "moto.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env()})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.client().list_buckets()
                return self
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto server exited: see {self.workdir / 'moto.log'}")
                time.sleep(0.1)
        raise RuntimeError(f"moto server on port {self.port} did not answer in 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self):  # noqa: ANN201 - boto3 client
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing-key-id",
                            aws_secret_access_key="testing-secret-key")

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (≥ 3 characters) and return ``s3://name``."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


class S3Proxy:
    """An S3 endpoint on 127.0.0.1 in front of ``upstream_port`` that forwards every request
    unchanged, except:

    * ``deny_writes``: every write (PUT, POST, DELETE) gets ``403 AccessDenied``, as a bucket
      policy denying ``s3:PutObject`` does (moto does not enforce bucket policies, so the
      denial is made here, in the protocol the code under test speaks);
    * ``hold``: the first PUT whose path contains it is cut in the middle: half its body is
      read, ``held`` is set, and the request never gets an answer (``close`` ends it): an
      upload in progress when its writer is killed.
    """

    DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
              b"<Message>Access Denied</Message></Error>")

    def __init__(self, upstream_port: int, *, deny_writes: bool = False,
                 hold: str | None = None) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        self.deny_writes, self.hold = deny_writes, hold
        self.held, self._closing = threading.Event(), threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _write(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                if proxy.hold and proxy.hold in self.path and not proxy.held.is_set():
                    self.rfile.read(size // 2)
                    proxy.held.set()
                    proxy._closing.wait()
                    self.close_connection = True
                    return
                body = self.rfile.read(size)
                if proxy.deny_writes:
                    self._answer(403, [("Content-Type", "application/xml")], proxy.DENIED)
                    return
                self._forward(body)

            def _forward(self, body: bytes | None = None) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                head = self.command == "HEAD"  # keeps the object's Content-Length
                self._answer(resp.status, [(k, v) for k, v in resp.getheaders()
                                           if k.lower() not in ("transfer-encoding", "connection")
                                           and (head or k.lower() != "content-length")],
                             b"" if head else data, length=not head)
                conn.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes,
                        length: bool = True) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_PUT = do_POST = do_DELETE = _write  # noqa: N815
            do_GET = do_HEAD = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
