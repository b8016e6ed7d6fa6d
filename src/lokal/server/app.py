"""The FastAPI application: routers of each API flavour over one runtime, and the edge where errors
become statuses. Every failure leaves as ``{"error": "..."}`` (Ollama routes) or OpenAI's error object
(/v1): typed lokal errors with their own status, request validation as 400 with a readable message,
and anything unexpected as a logged 500 with no traceback in the body."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal import __version__
from lokal.errors import LokalError
from lokal.server import (anthropic_api, anthropic_types, foundry_api, ollama_api, openai_api, openapi, ops_api,
                          responses_api, text_api)
from lokal.server.access import AccessMiddleware, note_route
from lokal.server.guard import HostGuard, MeteredRuntime, SecurityMiddleware, SecurityPolicy
from lokal.server.metrics import Metrics
from lokal.server.openai_types import error_body
from lokal.server.streaming import JSONResponse

log = logging.getLogger("lokal.server")

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
# Uploads stream to disk, so they have no body limit.
UNLIMITED_PATH_PREFIXES = ("/api/blobs/",)
# A refused oversized body is read and dropped up to this much, so the client sees the 413 rather than a
# reset connection; beyond it the connection is simply closed.
MAX_DRAIN_BYTES = 1024 * 1024 * 1024
# Browsers on this machine may call the API; other origins need LOKAL_ORIGINS (as OLLAMA_ORIGINS).
LOCAL_ORIGINS_REGEX = (r"^(https?://(localhost|127\.0\.0\.1|\[::1\]|0\.0\.0\.0)(:\d+)?"
                       r"|app://.*|file://.*|tauri://.*|vscode-webview://.*)$")


def create_app(runtime: Any, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               policy: SecurityPolicy | None = None) -> FastAPI:
    """The server's ASGI app over ``runtime`` (a ``lokal.runtime.Runtime``). Closing the app (lifespan
    shutdown) closes the runtime: running streams end with an error line, models unload.

    ``policy`` (keys, roles, audit, limits, Host allowlist) defaults to the one the runtime's settings
    describe; a runtime without settings gets an open one."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        preload = ops_api.start_preload(app)
        yield
        ops_api.stop_preload(preload)
        await runtime.close()

    app = FastAPI(title="lokal", version=__version__, lifespan=lifespan, dependencies=[Depends(note_route)],
                  description="Ollama and OpenAI APIs (and Foundry Local's management endpoints) over local models.")
    settings = getattr(runtime, "settings", None)
    if policy is None:
        policy = SecurityPolicy.from_settings(settings) if settings is not None else SecurityPolicy.open()
    app.state.runtime = MeteredRuntime(runtime)
    app.state.security = policy
    app.include_router(ollama_api.router)
    if getattr(getattr(runtime, "settings", None), "openai_api", True):  # LOKAL_OPENAI_API=0 removes /v1
        app.include_router(openai_api.router)
    app.include_router(foundry_api.router)
    app.include_router(foundry_api.service_router)
    app.include_router(ops_api.router)
    app.include_router(text_api.router)
    app.include_router(anthropic_api.router)
    app.include_router(responses_api.router)
    openapi.install(app)

    app.add_exception_handler(LokalError, _lokal_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

    extra_origins = list(getattr(settings, "origins", None) or [])
    # Innermost first: security inside CORS (refusals carry CORS headers; preflights need no key), the Host
    # check outside everything.
    app.add_middleware(SecurityMiddleware, fastapi_app=app, policy=policy)
    app.add_middleware(CORSMiddleware, allow_origins=extra_origins, allow_origin_regex=LOCAL_ORIGINS_REGEX,
                       allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(JSONBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(HostGuard, allowed_hosts=policy.allowed_hosts)
    app.state.metrics = Metrics(runtime)
    app.add_middleware(AccessMiddleware, metrics=app.state.metrics)  # outermost
    return app


# ---- errors ---------------------------------------------------------------------------------------------


def is_openai_path(request: Request) -> bool:
    return request.url.path.startswith("/v1/") or request.url.path == "/v1"


def error_response(request: Request, status: int, message: str, headers: dict[str, str] | None = None,
                   code: str | None = None) -> Response:
    if request.url.path.startswith("/v1/messages"):
        body = anthropic_types.error_body(status, message)
    elif is_openai_path(request):
        body = error_body(status, message, code=code)
    else:
        body = {"error": message}
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


async def _lokal_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LokalError)
    retry_after = getattr(exc, "retry_after", None)  # ServerBusy, RateLimited
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    code = "model_not_found" if exc.status == 404 and is_openai_path(request) else None
    return error_response(request, exc.status, exc.message, headers, code)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, 400, validation_message(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"not found: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(request, exc.status_code, message, exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return error_response(request, 500, f"internal error ({type(exc).__name__}); see the server log")


def validation_message(errors: Any) -> str:
    """Pydantic's error list as one readable sentence per problem, e.g. ``unknown field 'promt'``."""
    messages = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        field = ".".join(location)
        kind = error.get("type", "")
        if kind == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            messages.append(f"invalid JSON in the request body: {detail}".rstrip(": "))
        elif kind == "missing" and not field:
            messages.append("the request body is missing (expected a JSON object)")
        elif kind == "missing":
            messages.append(f"{field} is required")
        elif kind == "extra_forbidden":
            messages.append(f"unknown field '{field}'")
        elif kind in ("model_attributes_type", "dict_type", "model_type") and not field:
            messages.append("the request body must be a JSON object")
        else:
            messages.append(f"invalid {field or 'request'}: {error.get('msg', 'invalid value')}")
    return "; ".join(dict.fromkeys(messages)) or "invalid request"


# ---- middleware -----------------------------------------------------------------------------------------


class JSONBodyMiddleware:
    """Treat request bodies as JSON whatever their Content-Type, as Ollama does: ``curl -d '{…}'`` sends
    ``application/x-www-form-urlencoded`` and still means JSON."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(UNLIMITED_PATH_PREFIXES):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = dict(scope, headers=headers + [(b"content-type", b"application/json")])
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes``, declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNLIMITED_PATH_PREFIXES):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _drain(receive, MAX_DRAIN_BYTES)
            await self._too_large(scope, receive, send)
            return
        num_received = 0

        async def limited_receive() -> Message:
            nonlocal num_received
            message = await receive()
            if message["type"] == "http.request":
                num_received += len(message.get("body", b""))
                if num_received > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body reading; the handler above renders it.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"request body too large: the limit is {self.max_bytes // (1024 * 1024)} MB"

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = error_response(request, 413, self._message())
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: Receive, limit: int) -> None:
    num_drained = 0
    while num_drained <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        num_drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
