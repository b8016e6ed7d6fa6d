"""The server's security edge, as two ASGI middlewares and a metering wrapper around the runtime.

``HostGuard`` (outermost): a server bound to loopback answers only requests whose Host header names
loopback (``localhost``, ``127.0.0.1``, ``[::1]``) or a name in LOKAL_ALLOWED_HOSTS, as Ollama does, so a
web page cannot reach it through DNS rebinding (``Host: evil.example`` resolving to 127.0.0.1).

``SecurityMiddleware`` (inside CORS, so refusals still carry CORS headers and preflights pass): finds the
route, looks up its permission in ``lokal.security.roles.ROUTE_PERMISSIONS``, authenticates the key
(``Authorization: Bearer`` or ``x-api-key``), checks the role, the key's model allowlist and its rate
limits, and appends one audit line when the request ends. Tokens in and out reach it through
``MeteredRuntime``, which notes each generation's usage for the request being served.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import anyio
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal.security.audit import AuditLog
from lokal.security.keys import KeyRecord, KeyStore
from lokal.security.policy import audit_path, is_auth_required, is_loopback, keys_path
from lokal.security.ratelimit import RateLimiter
from lokal.security.roles import Permission, Role, least_role, may, permission_for
from lokal.server.logs import request_id
from lokal.types import Done

log = logging.getLogger("lokal.server")

# Body fields that name a model, across the API flavours (copy names two).
_MODEL_FIELDS = ("model", "name", "source", "destination", "from")
_MODEL_PATH_PARAMS = ("model", "name")
_AUDITED = (Permission.INFER, Permission.MANAGE, Permission.ADMIN)
_DENIED = (401, 403, 429)


@dataclass
class SecurityPolicy:
    """What the security edge needs, made once per app from the settings."""

    is_auth_required: bool
    keys: KeyStore | None
    audit: AuditLog | None
    limiter: RateLimiter
    default_requests_per_minute: int = 0
    default_tokens_per_minute: int = 0
    is_audit_content: bool = False
    allowed_hosts: frozenset[str] | None = None  # None: any Host (bound beyond loopback)

    @classmethod
    def open(cls) -> SecurityPolicy:
        """No keys, no audit, any Host: for an app over a runtime without settings (embedding, tests)."""
        return cls(is_auth_required=False, keys=None, audit=None, limiter=RateLimiter())

    @classmethod
    def from_settings(cls, settings: Any) -> SecurityPolicy:
        host, _ = settings.host
        allowed = None
        if is_loopback(host):
            allowed = frozenset({"localhost", "127.0.0.1", "::1", *(h.lower() for h in settings.allowed_hosts)})
        return cls(is_auth_required=is_auth_required(settings), keys=KeyStore(keys_path(settings)),
                   audit=AuditLog(audit_path(settings), max_bytes=settings.audit_max_bytes,
                                  fsync=settings.audit_fsync),
                   limiter=RateLimiter(), default_requests_per_minute=settings.rate_limit_requests,
                   default_tokens_per_minute=settings.rate_limit_tokens, is_audit_content=settings.audit_content,
                   allowed_hosts=allowed)


# ---- usage of the request being served ---------------------------------------------------------------------


@dataclass
class RequestUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    models: list[str] = field(default_factory=list)
    output: list[str] | None = None  # generated text, kept only with LOKAL_AUDIT_CONTENT=1


_current_usage: ContextVar[RequestUsage | None] = ContextVar("lokal_request_usage", default=None)


def _note(model: str, prompt_tokens: int, completion_tokens: int) -> None:
    usage = _current_usage.get()
    if usage is not None:
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        if model and model not in usage.models:
            usage.models.append(model)


class MeteredRuntime:
    """The runtime as handlers see it: the same object, with each generation's and embedding's token counts
    noted for the audit line and the per-key token limit."""

    def __init__(self, runtime: Any):
        self._runtime = runtime

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    async def generate(self, request: Any) -> AsyncIterator[Any]:
        events = self._runtime.generate(request)
        try:
            async for event in events:
                if isinstance(event, Done):
                    _note(request.model, event.prompt_eval_count, event.eval_count)
                elif (usage := _current_usage.get()) is not None and usage.output is not None:
                    usage.output.append(event.text)
                yield event
        finally:
            await events.aclose()

    async def embed(self, request: Any) -> Any:
        result = await self._runtime.embed(request)
        _note(request.model, result.prompt_eval_count, 0)
        return result


# ---- Host header --------------------------------------------------------------------------------------------


def host_name(header: str) -> str:
    """``Host`` without its port: ``127.0.0.1:11434`` → ``127.0.0.1``, ``[::1]:80`` → ``::1``."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostGuard:
    def __init__(self, app: ASGIApp, allowed_hosts: frozenset[str] | None):
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed_hosts is not None:
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            name = host_name(header)
            if header and name not in self.allowed_hosts and not name.endswith(".localhost"):
                await _refuse(scope, receive, send, 403,
                              f"host {name!r} is not allowed: this server is bound to loopback and answers "
                              f"only localhost, 127.0.0.1 and [::1] (add names with LOKAL_ALLOWED_HOSTS)")
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                  headers: dict[str, str] | None = None) -> None:
    from lokal.server.app import error_response

    request = Request(scope, receive)
    await error_response(request, status, message, headers)(scope, receive, send)


# ---- authentication, roles, limits, audit -------------------------------------------------------------------


def presented_key(scope: Scope) -> str | None:
    headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in (b"authorization", b"x-api-key")}
    authorization = headers.get(b"authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return headers.get(b"x-api-key", "").strip() or None


def effective_routes(app: Any) -> list[Any]:
    """Every route the app serves, each with its full ``path`` template, ``methods`` and ``matches(scope)``.
    Recent FastAPI keeps included routers as lazy groups whose ``effective_route_contexts()`` hold their
    routes with the prefix applied; older versions copied them into ``app.routes``. Both shapes are read."""
    routes = []
    for route in app.router.routes:
        expand = getattr(route, "effective_route_contexts", None)
        routes.extend(expand() if callable(expand) else [route])
    return routes


def match_route(routes: list[Any], scope: Scope) -> tuple[str | None, dict[str, Any]]:
    """(path template, path params) of the route among ``routes`` (an app's ``effective_routes``) that will
    serve this request; ``None`` when none matches fully (the router then answers 404 or 405)."""
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", None), child.get("path_params", {})
    return None, {}


class RouteTable:
    """``match_route`` remembered per method and path. The app's routes are fixed once it serves, and trying
    them all (some 60, FastAPI's lazy route groups expanded each time) was a good share of the work lokal
    does per request. Only matches are remembered, at most ``MAX_ENTRIES``, so random paths cannot grow it."""

    MAX_ENTRIES = 1024

    def __init__(self, app: Any):
        self._app = app
        self._routes: list[Any] | None = None  # read at the first request, when every router is included
        self._known: dict[tuple[str, str], tuple[str | None, dict[str, Any]]] = {}

    def match(self, scope: Scope) -> tuple[str | None, dict[str, Any]]:
        """As ``match_route``; the params dict is shared between requests: read it, never change it."""
        key = (scope["method"], scope["path"])
        found = self._known.get(key)
        if found is None:
            if self._routes is None:
                self._routes = effective_routes(self._app)
            found = match_route(self._routes, scope)
            if found[0] is not None:
                if len(self._known) >= self.MAX_ENTRIES:
                    self._known.clear()
                self._known[key] = found
        return found


@dataclass
class Caller:
    key: KeyRecord | None  # None: no key needed and none given

    @property
    def role(self) -> Role:
        return self.key.role_value if self.key else Role.ADMIN

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None


@dataclass
class AuditEntry:
    """One request as the audit log records it, filled in as the request goes."""

    scope: Scope
    caller: Caller
    route: str
    started: float
    is_audited: bool
    models: list[str]
    usage: RequestUsage
    status: int = 0
    request: Any = None  # the request body, only with LOKAL_AUDIT_CONTENT=1
    is_finished: bool = False
    # The id the access middleware gave the request (sent back as X-Request-Id), so both logs name it alike.
    request_id: str = field(default_factory=lambda: request_id.get() or uuid.uuid4().hex)

    def to_record(self) -> dict[str, Any]:
        client = self.scope.get("client")
        models = self.models or self.usage.models
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "request_id": self.request_id,
            "key": self.caller.key_id, "role": self.caller.role.label if self.caller.key else None,
            "client": client[0] if client else None, "route": self.route,
            "model": models[0] if len(models) == 1 else (models or None), "status": self.status,
            "tokens_in": self.usage.prompt_tokens, "tokens_out": self.usage.completion_tokens,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 1),
        }
        if self.request is not None:
            record["request"] = self.request
        if self.usage.output:
            record["output"] = "".join(self.usage.output)
        return record


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, policy: SecurityPolicy):
        self.app = app
        self.fastapi_app = fastapi_app
        self.routes = RouteTable(fastapi_app)
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        template, path_params = self.routes.match(scope)
        permission = permission_for(scope["method"], template) if template else None
        if permission is Permission.OPEN:
            await self.app(scope, receive, send)
            return
        key = presented_key(scope)
        record = None
        if key and self.policy.keys is not None:
            # scrypt takes tens of milliseconds for a key not seen before: off the event loop.
            record = await anyio.to_thread.run_sync(self.policy.keys.authenticate, key)
        caller = Caller(record)
        refusal = self._refusal(caller, key, template, permission)
        models = [str(path_params[p]) for p in _MODEL_PATH_PARAMS if path_params.get(p)]
        body = b""
        if refusal is None and (permission in _AUDITED or (record and record.models)) and _has_json_body(scope):
            receive, body, refusal = await _read_body(receive)
            models += _body_models(body)
        if refusal is None and record is not None:
            refusal = self._model_refusal(record, models)
        if refusal is None and record is not None:
            refusal = self._rate_refusal(record)

        entry = AuditEntry(scope, caller, f"{scope['method']} {template or scope['path']}", started,
                           is_audited=permission in _AUDITED, models=models,
                           usage=RequestUsage(output=[] if self.policy.is_audit_content else None))
        if self.policy.is_audit_content and body:
            entry.request = _content(body)

        async def send_then_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry.status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Before the last byte leaves: a client that got its answer finds the audit line written
                # and its tokens counted against its limit.
                await self._finish(entry)
            await send(message)

        try:
            if refusal is not None:
                status, message, headers = refusal
                await _refuse(scope, receive, send_then_record, status, message, headers)
                return
            token = _current_usage.set(entry.usage)
            try:
                await self.app(scope, receive, send_then_record)
            finally:
                _current_usage.reset(token)
        finally:
            with anyio.CancelScope(shield=True):  # a client that went away mid-stream is still recorded
                await self._finish(entry)

    async def _finish(self, entry: AuditEntry) -> None:
        if entry.is_finished:
            return
        entry.is_finished = True
        usage = entry.usage
        num_tokens = usage.prompt_tokens + usage.completion_tokens
        if entry.caller.key is not None and num_tokens:
            self.policy.limiter.add_tokens(entry.caller.key.id, num_tokens)
        if self.policy.audit is not None and (entry.is_audited or entry.status in _DENIED):
            try:
                await anyio.to_thread.run_sync(self.policy.audit.append, entry.to_record())
            except Exception:  # never fail a request over its audit line; say so loudly
                log.exception("could not write the audit log %s", self.policy.audit.path)

    def _refusal(self, caller: Caller, key: str | None, template: str | None,
                 permission: Permission | None) -> tuple[int, str, dict[str, str]] | None:
        if not self.policy.is_auth_required:
            return None
        challenge = {"WWW-Authenticate": 'Bearer realm="lokal"'}
        if caller.key is None:
            if key:
                return 401, "invalid API key (unknown, revoked or expired)", challenge
            return 401, ("an API key is required: send it as 'Authorization: Bearer <key>' (or x-api-key); "
                         "create one with `lokal keys create`"), challenge
        if template is None:
            return None  # the router answers 404/405 to an authenticated caller
        if permission is None:
            return 403, f"{template} is not in the permission table; nobody may call it", {}
        if not may(caller.role, permission):
            needed = least_role(permission)
            return 403, (f"this key's role ({caller.role.label}) may not {permission.value} "
                         f"({needed.label if needed else 'admin'} or above can)"), {}
        return None

    def _model_refusal(self, record: KeyRecord, models: list[str]) -> tuple[int, str, dict[str, str]] | None:
        for model in models:
            if not record.may_use_model(model):
                return 403, f"this key may not use model {model!r} (allowed: {', '.join(record.models)})", {}
        return None

    def _rate_refusal(self, record: KeyRecord) -> tuple[int, str, dict[str, str]] | None:
        requests_limit = record.requests_per_minute or self.policy.default_requests_per_minute
        tokens_limit = record.tokens_per_minute or self.policy.default_tokens_per_minute
        wait = self.policy.limiter.admit(record.id, requests_limit, tokens_limit)
        if wait is None:
            return None
        return 429, (f"rate limit reached for key {record.id} ({requests_limit or 'unlimited'} requests, "
                     f"{tokens_limit or 'unlimited'} tokens per minute); retry in {wait}s"), {"Retry-After": str(wait)}


def _has_json_body(scope: Scope) -> bool:
    return scope["method"] in ("POST", "DELETE", "PUT", "PATCH") and not scope["path"].startswith("/api/blobs/")


async def _read_body(receive: Receive) -> tuple[Receive, bytes, tuple[int, str, dict[str, str]] | None]:
    """The whole request body (already bounded by the body limit) and a receive that replays it once."""
    chunks: list[bytes] = []
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
    except HTTPException as exc:  # over the body limit
        return receive, b"", (exc.status_code, str(exc.detail), {"Connection": "close"})
    body = b"".join(chunks)
    is_replayed = False

    async def replay() -> Message:
        nonlocal is_replayed
        if not is_replayed:
            is_replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay, body, None


def _content(body: bytes) -> Any:
    """The request as the audit log keeps it with LOKAL_AUDIT_CONTENT=1 (images left out: they are large)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
    if isinstance(data, dict):
        data.pop("images", None)
        for message in data.get("messages") or []:
            if isinstance(message, dict):
                message.pop("images", None)
    return data


def _body_models(body: bytes) -> list[str]:
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    models = []
    for name in _MODEL_FIELDS:
        value = data.get(name)
        if isinstance(value, dict):  # Foundry's download names the model in a catalog entry
            value = value.get("Name")
        if isinstance(value, str) and value:
            models.append(value)
    return models
