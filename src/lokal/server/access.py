"""The outermost middleware: a request id for every request (the client's ``X-Request-Id`` if it is a sane
token, else a new one; echoed in the response), the HTTP metrics, and one access log line per request with
its model, status, tokens and durations.

Generations tell it what their event stream showed through ``note_event`` (called by the streaming edge for
every event it passes on), so time to first token and inter-token gaps are measured where the client's
bytes are produced, and tokens come from the final ``Done``, the same numbers the response reports.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal.server.logs import request_id
from lokal.server.metrics import Metrics
from lokal.types import Done, Event, Token

log = logging.getLogger("lokal.access")

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_OPS_ROUTES = frozenset({"/metrics", "/api/metrics", "/ready", "/api/health"})


@dataclass
class RequestRecord:
    id: str
    started: float  # time.perf_counter() at arrival
    first_token_at: float | None = None
    last_token_at: float | None = None
    token_gaps: list[tuple[float, int]] = field(default_factory=list)  # (seconds since the last event, tokens)
    done: Done | None = None
    route: str | None = None  # the matched route's template, e.g. /api/blobs/{digest}


current_record: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("lokal_request", default=None)


def note_event(event: Event) -> None:
    """Record a generation event as it leaves for the client (no-op outside a request)."""
    record = current_record.get()
    if record is None:
        return
    if isinstance(event, Token):
        now = time.perf_counter()
        if record.first_token_at is None:
            record.first_token_at = now
        elif record.last_token_at is not None:
            record.token_gaps.append((now - record.last_token_at, max(1, len(event.ids))))
        record.last_token_at = now
    elif isinstance(event, Done):
        record.done = event


async def note_route(request: Request) -> None:
    """An app-wide dependency: runs once routing has chosen a route, and names the request by its template
    (FastAPI puts the route in the scope the endpoint sees; middleware further in may copy that scope).
    ``async`` because FastAPI runs a plain ``def`` dependency in a worker thread: a thread hop per request."""
    record = current_record.get()
    route = request.scope.get("route")
    if record is not None and route is not None:
        record.route = getattr(route, "path", None)


def api_of(route: str) -> str:
    """The API flavour a route belongs to, for the ``api`` label."""
    if route in _OPS_ROUTES:
        return "ops"
    if route.startswith("/v1/messages"):
        return "anthropic"
    if route.startswith("/v1"):
        return "openai"
    if route.startswith(("/openai/", "/models", "/status")):
        return "foundry"
    if route.startswith("/api/") or route == "/":
        return "ollama"
    if route == "unmatched":
        return "none"
    return "other"


class AccessMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(id=_request_id(scope), started=time.perf_counter())
        id_token = request_id.set(record.id)
        record_token = current_record.set(record)
        status = 500  # what the client gets if the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", record.id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            try:
                self._finish(scope, record, status)
            finally:
                current_record.reset(record_token)
                request_id.reset(id_token)

    def _finish(self, scope: Scope, record: RequestRecord, status: int) -> None:
        seconds = time.perf_counter() - record.started
        route = record.route or "unmatched"  # no route: a 404, 405, or a body refused before routing
        api = api_of(route)
        self.metrics.observe_http(api, route, scope["method"], status, seconds)
        done = record.done
        ttft = record.first_token_at - record.started if record.first_token_at is not None else None
        if done is not None:
            self.metrics.observe_generation(done, ttft, record.token_gaps)
        client = (scope.get("client") or ("", 0))[0]
        fields: dict[str, Any] = {"method": scope["method"], "path": scope["path"], "route": route, "api": api,
                                  "status": status, "duration_ms": round(seconds * 1000, 1), "client": client}
        if done is not None and done.model:
            fields.update(model=done.model, prompt_tokens=done.prompt_eval_count,
                          completion_tokens=done.eval_count, done_reason=done.reason)
        if ttft is not None:
            fields["ttft_ms"] = round(ttft * 1000, 1)
        log.info("%s", _text_line(fields, record.id), extra=fields)


def _request_id(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def _text_line(fields: dict[str, Any], rid: str) -> str:
    line = f'{fields["client"]} "{fields["method"]} {fields["path"]}" {fields["status"]} {fields["duration_ms"]}ms'
    for name in ("model", "prompt_tokens", "completion_tokens", "ttft_ms"):
        if name in fields:
            line += f" {name}={fields[name]}"
    return f"{line} id={rid}"
