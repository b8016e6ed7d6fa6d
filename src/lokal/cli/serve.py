"""``lokal serve`` runs the server; ``lokal ps`` and ``lokal stop`` ask a running one (through
``lokal.Client``) what is loaded and to unload a model."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

import typer

from lokal.config import SETTINGS, Settings

_ENVIRONMENT_HELP = "\n\n".join(f"{s.name}  {s.description} (default: {s.default or 'unset'})" for s in SETTINGS)
# /api/ps reports a model kept forever with an expiry this far away.
_FOREVER_AFTER_YEARS = 100


def serve(
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind, host[:port] (LOKAL_HOST)."),
    models: Optional[str] = typer.Option(None, "--models", help="Model store directory (LOKAL_MODELS)."),
    keep_alive: Optional[str] = typer.Option(None, "--keep-alive",
                                             help="Idle time before unloading (LOKAL_KEEP_ALIVE)."),
    num_parallel: Optional[int] = typer.Option(None, "--num-parallel",
                                               help="Sequences per model at once (LOKAL_NUM_PARALLEL)."),
    debug: bool = typer.Option(False, "--debug", help="Verbose logs (LOKAL_DEBUG)."),
    preload: Optional[list[str]] = typer.Option(None, "--preload", metavar="MODEL",
                                                help="Load MODEL at start and keep it loaded; repeat or separate "
                                                     "with commas for several (LOKAL_PRELOAD). /ready waits for them."),
    log_format: Optional[str] = typer.Option(None, "--log-format", help="text or json (LOKAL_LOG_FORMAT)."),
    auth: Optional[str] = typer.Option(None, "--auth", help="API keys: auto, on or off (LOKAL_AUTH)."),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth",
                                          help="Confirm --auth off (LOKAL_INSECURE_NO_AUTH)."),
    tls_cert: Optional[str] = typer.Option(None, "--tls-cert", help="PEM certificate for HTTPS (LOKAL_TLS_CERT)."),
    tls_key: Optional[str] = typer.Option(None, "--tls-key", help="PEM private key for HTTPS (LOKAL_TLS_KEY)."),
) -> None:
    """Start the server: the Ollama API, the OpenAI API (/v1) and Foundry Local's endpoints. Stop it with Ctrl+C."""
    from lokal.server.serve import serve as run_server

    overrides = {"host": host, "models": models, "keep_alive": keep_alive, "num_parallel": num_parallel,
                 "debug": "1" if debug else None, "log_format": log_format,
                 "preload": ",".join(preload) if preload else None, "auth": auth,
                 "insecure_no_auth": "1" if insecure_no_auth else None, "tls_cert": tls_cert, "tls_key": tls_key}
    run_server(Settings(overrides={k: v for k, v in overrides.items() if v is not None}))


def ps() -> None:
    """List the models a running server has loaded."""
    from lokal.cli.render import format_table, human_bytes
    from lokal.client import Client

    with Client() as client:
        running = client.ps()["models"]
    rows = [[m["name"], m["digest"].removeprefix("sha256:")[:12], human_bytes(m["size"]),
             processor(m["size"], m["size_vram"]), str(m.get("context_length", "")),
             f'{m.get("format", "gguf")}/{m.get("device", "cpu")}/{m.get("concurrency", "batch")}'
             f'×{m.get("num_parallel", 1)}',
             until(m.get("expires_at"))]
            for m in running]
    print(format_table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "ENGINE", "UNTIL"], rows), end="")


def stop(model: str = typer.Argument(..., help="Model to unload.")) -> None:
    """Unload a model from a running server now."""
    from lokal.cli import fail
    from lokal.client import Client
    from lokal.store.names import ModelName

    wanted = ModelName.parse(model)
    with Client() as client:
        loaded = [m["name"] for m in client.ps()["models"]]
        if not any(ModelName.parse(name) == wanted for name in loaded):
            raise fail(f'couldn\'t find model "{model}" to stop')
        client.stop(model)


def processor(size: int, size_vram: int) -> str:
    """Where the model runs, as Ollama's PROCESSOR column says it."""
    if size_vram <= 0 or size <= 0:
        return "100% CPU"
    if size_vram >= size:
        return "100% GPU"
    gpu_percent = round(100 * size_vram / size)
    return f"{100 - gpu_percent}%/{gpu_percent}% CPU/GPU"


def until(expires_at: Any) -> str:
    if not expires_at:
        return "Forever"
    from lokal.cli.render import human_time

    moment = datetime.fromisoformat(str(expires_at).replace("Z", "+00:00"))
    now = datetime.now(timezone.utc)
    if moment.year - now.year >= _FOREVER_AFTER_YEARS:
        return "Forever"
    if moment <= now:
        return "Stopping..."
    return human_time(moment, now)


def register(app: typer.Typer) -> None:
    app.command("serve", epilog="Environment:\n\n" + _ENVIRONMENT_HELP)(serve)
    app.command("ps")(ps)
    app.command("stop")(stop)
