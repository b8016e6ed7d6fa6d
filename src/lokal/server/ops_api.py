"""Operations routes: Prometheus metrics (``/metrics`` and ``/api/metrics``, as the seed's scrape config
names them) and readiness (``/ready``), plus the models preloaded at start (LOKAL_PRELOAD, ``--preload``).

Liveness is ``/api/health`` (Ollama's module): it answers while the event loop serves. Readiness says
whether this replica should get traffic: the store is readable and every preloaded model has loaded once.
It does not follow later unloads (keep_alive): a ready replica that loads on demand is still ready, and a
replica taken out of the Service for being idle would never get the request that loads it again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response

from lokal.errors import LokalError
from lokal.server.metrics import CONTENT_TYPE
from lokal.server.streaming import JSONResponse

log = logging.getLogger("lokal.server")

router = APIRouter(tags=["operations"])


@dataclass
class Preload:
    models: list[str]
    loaded: list[str] = field(default_factory=list)
    error: str | None = None
    task: asyncio.Task[None] | None = None

    @property
    def is_done(self) -> bool:
        return len(self.loaded) == len(self.models)


def start_preload(app: FastAPI) -> Preload:
    """Begin loading LOKAL_PRELOAD's models in the background (kept loaded: keep_alive -1, until a request's
    own keep_alive says otherwise). The server answers meanwhile; /ready says 503 until they are in."""
    runtime = app.state.runtime
    models = list(getattr(getattr(runtime, "settings", None), "preload", None) or [])
    preload = Preload(models)
    app.state.preload = preload
    if models:
        preload.task = asyncio.get_running_loop().create_task(_preload(runtime, preload))
    return preload


async def _preload(runtime: Any, preload: Preload) -> None:
    for model in preload.models:
        try:
            await runtime.load(model, keep_alive=-1)
        except LokalError as exc:
            preload.error = f'preloading "{model}" failed: {exc.message}'
            log.error("%s", preload.error)
            return
        except Exception as exc:
            preload.error = f'preloading "{model}" failed: {type(exc).__name__}: {exc}'
            log.exception("preloading %s failed", model)
            return
        preload.loaded.append(model)
        log.info("preloaded %s", model)


def stop_preload(preload: Preload) -> None:
    if preload.task is not None and not preload.task.done():
        preload.task.cancel()


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
@router.get("/api/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this server's metrics."""
    # On the event loop, not a worker thread: the collector reads the runtime's state, which only the loop
    # changes (a scrape costs about a millisecond).
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/ready")
@router.head("/ready", include_in_schema=False)
async def ready(request: Request) -> Response:
    """Readiness: 200 when the store is readable and LOKAL_PRELOAD's models have loaded, else 503 with why."""
    runtime = request.app.state.runtime
    preload: Preload | None = getattr(request.app.state, "preload", None)
    try:
        await asyncio.to_thread(runtime.store.list)
    except OSError as exc:
        return _not_ready(f"the model store is not readable: {exc.strerror or exc}")
    if preload is not None:
        if preload.error:
            return _not_ready(preload.error)
        if not preload.is_done:
            waiting = [m for m in preload.models if m not in preload.loaded]
            return _not_ready(f"preloading {', '.join(waiting)}")
    loaded = [model.name for model in runtime.running()]
    return JSONResponse({"status": "ready", "models": loaded})


def _not_ready(reason: str) -> Response:
    return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
