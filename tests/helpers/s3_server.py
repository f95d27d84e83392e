"""A real S3-protocol server on loopback for tests: moto's standalone server behind a small
proxy that injects faults (moto injects none itself).

The proxy forwards every request to moto unchanged, except that it can answer the next N
requests with a 503 (S3's ``SlowDown``), hold the next N for a while before forwarding them, or
deny every request for a bucket with a 403 ``AccessDenied``, as a store would.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.server import ThreadedMotoServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _error_xml(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
    ).encode()


@dataclasses.dataclass
class Faults:
    """What the proxy does to the next requests; the tests change it while jobs run."""

    fail_next: int = 0
    delay_next: int = 0
    delay_seconds: float = 0.0
    denied_buckets: set[str] = dataclasses.field(default_factory=set)
    requests: int = 0
    failed: int = 0
    delayed: int = 0
    bytes_sent: int = 0  # body bytes of the answers forwarded (what ranged reads fetched)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.fail_next = self.delay_next = 0
            self.denied_buckets.clear()

    def decide(self, bucket: str) -> tuple[int | None, float]:
        """(status to answer instead of forwarding, seconds to wait before forwarding)."""
        with self.lock:
            self.requests += 1
            if bucket in self.denied_buckets:
                return 403, 0.0
            if self.fail_next > 0:
                self.fail_next -= 1
                self.failed += 1
                return 503, 0.0
            if self.delay_next > 0:
                self.delay_next -= 1
                self.delayed += 1
                return None, self.delay_seconds
            return None, 0.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        # A HEAD answer has no body but carries the object's Content-Length (its size).
        keep_length = self.command == "HEAD"
        for name, value in headers:
            if name.lower() in _HOP_BY_HOP or (
                name.lower() == "content-length" and not keep_length
            ):
                continue
            self.send_header(name, value)
        if not (keep_length and any(name.lower() == "content-length" for name, _ in headers)):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self) -> None:
        body = self._body()
        bucket = self.path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        status, delay = self.server.faults.decide(bucket)
        if status == 503:
            self._answer(503, [], _error_xml("SlowDown", "Please reduce your request rate."))
            return
        if status == 403:
            self._answer(403, [], _error_xml("AccessDenied", "Access Denied"))
            return
        if delay:
            time.sleep(delay)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            with self.server.faults.lock:
                self.server.faults.bytes_sent += len(payload)
            self._answer(response.status, response.getheaders(), payload)
        finally:
            connection.close()

    # The base class dispatches on these names.
    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward  # noqa: N815


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, upstream_port: int, faults: Faults) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.upstream_port = upstream_port
        self.faults = faults


@dataclasses.dataclass
class S3Server:
    """A running loopback S3 server: ``endpoint`` goes into ``AWS_ENDPOINT_URL``."""

    endpoint: str
    faults: Faults
    _moto: ThreadedMotoServer
    _proxy: _ProxyServer

    @classmethod
    def start(cls) -> S3Server:
        # moto's web server logs every request at INFO.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        moto_port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
        moto.start()
        faults = Faults()
        proxy = _ProxyServer(free_port(), moto_port, faults)
        threading.Thread(target=proxy.serve_forever, daemon=True, name="s3-proxy").start()
        return cls(f"http://127.0.0.1:{proxy.server_address[1]}", faults, moto, proxy)

    @property
    def moto_endpoint(self) -> str:
        """moto itself, without the fault-injecting proxy (benchmarks)."""
        return f"http://127.0.0.1:{self._moto._port}"

    def stop(self) -> None:
        self._proxy.shutdown()
        self._proxy.server_close()
        self._moto.stop()

    def environment(self) -> dict[str, str]:
        """Fake credentials and the endpoint, as botocore reads them from the environment."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            # Never look for an instance-metadata service (no network beyond loopback).
            "AWS_EC2_METADATA_DISABLED": "true",
        }
