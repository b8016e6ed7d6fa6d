"""A small threaded HTTP server for tests: serves files with Range support, records every request, and can
throttle or drop a download part-way (to test resuming). Subclasses route requests in ``route``."""

from __future__ import annotations

import functools
import hashlib
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_PIECE = 64 * 1024


@dataclass(frozen=True)
class Payload:
    """Bytes to serve: in memory, or a file read on demand (the 98 MB GGUF is never loaded whole)."""

    data: bytes | None = None
    path: Path | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size

    @property
    def sha256(self) -> str:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        return _file_sha256(str(self.path), self.path.stat().st_mtime_ns)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        with open(self.path, "rb") as file:
            file.seek(start)
            return file.read(end - start)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, mtime_ns: int) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


@dataclass
class Seen:
    """One request the server got, and how many body bytes it has sent back so far."""

    method: str
    path: str
    range: str | None
    headers: dict[str, str]
    num_body_bytes: int = 0


class FakeServer:
    """Start with ``with Subclass() as server:``; ``server.url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.throttle_bytes_per_second: float | None = None
        self.honors_range = True  # False: answer every GET with the whole file, as some servers do
        self.bytes_sent: dict[str, int] = {}  # request path → body bytes sent so far
        self._drops: dict[str, int] = {}  # request path → bytes to send before the connection drops (once)
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner._dispatch(self, "GET")

            def do_HEAD(self) -> None:
                owner._dispatch(self, "HEAD")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def drop_after(self, path: str, num_bytes: int) -> None:
        """The next GET of ``path`` sends ``num_bytes`` of the body, then closes the connection."""
        self._drops[path] = num_bytes

    def seen(self, method: str | None = None, path_prefix: str = "") -> list[Seen]:
        with self._lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and r.path.startswith(path_prefix)]

    # -- for subclasses --------------------------------------------------------------------------------

    def route(self, request: BaseHTTPRequestHandler, method: str, path: str) -> None:
        raise NotImplementedError

    def send_json(self, request: BaseHTTPRequestHandler, status: int, body: bytes,
                  headers: dict[str, str] | None = None, content_type: str = "application/json") -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)

    def send_redirect(self, request: BaseHTTPRequestHandler, location: str,
                      headers: dict[str, str] | None = None) -> None:
        request.send_response(307)
        request.send_header("Location", location)
        request.send_header("Content-Length", "0")
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()

    def send_payload(self, request: BaseHTTPRequestHandler, payload: Payload,
                     headers: dict[str, str] | None = None) -> None:
        """200 with the whole payload, or 206 with the asked range (``Range: bytes=<start>-``)."""
        size = payload.size
        start, status = 0, 200
        asked = request.headers.get("Range")
        if self.honors_range and asked and asked.startswith("bytes=") and asked.endswith("-"):
            start = int(asked[len("bytes="):-1])
            if start >= size:
                request.send_response(416)
                request.send_header("Content-Range", f"bytes */{size}")
                request.send_header("Content-Length", "0")
                request.end_headers()
                return
            status = 206
        request.send_response(status)
        request.send_header("Content-Type", "application/octet-stream")
        request.send_header("Content-Length", str(size - start))
        request.send_header("Accept-Ranges", "bytes")
        if status == 206:
            request.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        if request.command == "HEAD":
            return
        path = request.path.split("?")[0]
        drop_at = self._drops.pop(path, None)
        stop = size if drop_at is None else min(size, start + drop_at)
        position = start
        began = time.monotonic()
        while position < stop:
            end = min(position + _PIECE, stop)
            request.wfile.write(payload.read(position, end))
            self._count(request, path, end - position)
            position = end
            if self.throttle_bytes_per_second:
                due = began + (position - start) / self.throttle_bytes_per_second
                time.sleep(max(0.0, due - time.monotonic()))
        if drop_at is not None:  # fewer bytes than Content-Length promised: the client sees a broken body
            request.wfile.flush()
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)

    def _count(self, request: BaseHTTPRequestHandler, path: str, num_bytes: int) -> None:
        with self._lock:
            self.bytes_sent[path] = self.bytes_sent.get(path, 0) + num_bytes
            request.seen.num_body_bytes += num_bytes

    def _dispatch(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = request.path.split("?")[0]
        request.seen = Seen(method, path, request.headers.get("Range"), dict(request.headers))
        with self._lock:
            self.requests.append(request.seen)
        try:
            self.route(request, method, path)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a killed pull)
