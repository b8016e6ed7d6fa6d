"""Foundry Local's management endpoints (/openai/*), as its SDK's FoundryLocalManager calls them:
model ids are plain strings, load/unload are GETs, and a download streams progress text lines ending
with one JSON object ``{"success": …, "errorMessage": …}``."""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

import anyio
import orjson
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict

from lokal.errors import BadRequest, LokalError
from lokal.server.edge import iterate_in_thread, runtime_of
from lokal.server.streaming import streaming_response

log = logging.getLogger("lokal.server")

router = APIRouter(prefix="/openai", tags=["foundry"])


class DownloadModel(BaseModel):
    """The catalog entry the SDK sends; lokal needs only its name."""

    model_config = ConfigDict(extra="allow")

    Name: str


class DownloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: DownloadModel | str
    """The model to download: a catalog entry object, or simply its name."""
    token: str | None = None
    """Access token for gated sources; unused."""
    IgnorePipeReport: bool | None = None
    """Unused; accepted for compatibility."""


@router.get("/models")
async def cached_models(request: Request) -> list[str]:
    """Names of the models in the store."""
    entries = (await anyio.to_thread.run_sync(runtime_of(request).store.list)).models
    return [entry.name.display for entry in entries]


@router.get("/loadedmodels")
async def loaded_models(request: Request) -> list[str]:
    return [model.name for model in runtime_of(request).running()]


@router.get("/load/{name:path}")
async def load(name: str, request: Request,
               ttl: float = Query(600, description="Seconds to keep it loaded; -1 = forever")) -> Response:
    await runtime_of(request).load(name, keep_alive=ttl)
    return Response(status_code=200)


@router.get("/unload/{name:path}")
async def unload(name: str, request: Request,
                 force: bool = Query(False, description="Accepted; a busy model unloads when its requests end")
                 ) -> Response:
    await runtime_of(request).unload(name)
    return Response(status_code=200)


@router.get("/unloadall")
async def unload_all(request: Request) -> Response:
    await runtime_of(request).unload_all()
    return Response(status_code=200)


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    return {"endpoints": [runtime.settings.base_url], "modelDirPath": str(runtime.settings.models),
            "pipeName": None}


@router.post("/download")
async def download(body: DownloadRequest, request: Request) -> Response:
    """Pull a model; streams "Total NN.NN% Downloading NAME" lines, then the result object."""
    from lokal.store.sources import pull as pull_model

    runtime = runtime_of(request)
    name = body.model if isinstance(body.model, str) else body.model.Name
    if not name:
        raise BadRequest("model name is required")
    events = iterate_in_thread(lambda: pull_model(runtime.store, name, runtime.settings, allow_local_files=False,
                                                  allow_private=runtime.settings.allow_private_pulls))

    async def lines() -> AsyncIterator[bytes]:
        result: dict[str, Any] = {"success": True, "errorMessage": None}
        try:
            async for progress in events:
                if progress.total:
                    percent = 100.0 * (progress.completed or 0) / progress.total
                    yield f"Total {percent:.2f}% Downloading {name}\n".encode()
        except LokalError as exc:
            result = {"success": False, "errorMessage": exc.message}
        except Exception:
            log.exception("download failed")
            result = {"success": False, "errorMessage": "internal error; see the server log"}
        finally:
            await events.aclose()
        yield orjson.dumps(result) + b"\n"

    return streaming_response(lines(), "text/plain; charset=utf-8")



# ---- Foundry Local 1.x service endpoints (beside the legacy /openai/* ones) ---------------------------

service_router = APIRouter(tags=["foundry"])


@service_router.get("/status")
async def service_status(request: Request) -> dict[str, Any]:
    """Foundry Local 1.x's service status: where it listens, the model cache and what is loaded."""
    runtime = runtime_of(request)
    return {"status": "running", "endpoints": [runtime.settings.base_url],
            "modelDirPath": str(runtime.settings.models),
            "loadedModels": [model.name for model in runtime.running()]}


@service_router.get("/models/loaded")
async def service_loaded(request: Request) -> list[dict[str, Any]]:
    """Loaded models with where and how they run."""
    return [{"name": model.name, "format": model.format, "device": model.device, "reason": model.device_reason,
             "concurrency": model.concurrency, "parallelRequests": model.num_parallel, "contextLength": model.context_length, "size": model.size}
            for model in runtime_of(request).running()]


@service_router.get("/models/load/{name:path}")
async def service_load(name: str, request: Request,
                       ttl: float = Query(600, description="Seconds to keep it loaded; -1 = forever")
                       ) -> dict[str, Any]:
    await runtime_of(request).load(name, keep_alive=ttl)
    return {"name": name, "loaded": True}


@service_router.get("/models/unload/{name:path}")
async def service_unload(name: str, request: Request) -> dict[str, Any]:
    await runtime_of(request).unload(name)
    return {"name": name, "loaded": False}


@service_router.get("/api/hardware")
async def hardware(request: Request) -> dict[str, Any]:
    """This machine: CPU, ISA features, memory, GPUs, NPUs, llama.cpp backends, ONNX execution providers,
    and the devices LOKAL_DEVICE prefers, in order."""
    from lokal.hardware import detect

    detected = await anyio.to_thread.run_sync(detect)
    return {**detected.to_dict(), "preference": list(runtime_of(request).settings.device)}
