"""Foundry Local's verbs: ``models``, ``model``, ``service``, ``cache`` groups, ``convert``, ``hardware``,
``init`` and ``deploy``. Where Foundry's verb is Ollama's under another name, it calls the same command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from lokal.config import Settings

models_app = typer.Typer(help="The model catalog: list, pull, test, info (Foundry Local's `models`).",
                         no_args_is_help=True)
model_app = typer.Typer(help="Foundry Local's `model` verbs: list, run, download, info, load, unload.",
                        no_args_is_help=True)
service_app = typer.Typer(help="The background server: start, stop, restart, status, ps.", no_args_is_help=True)
cache_app = typer.Typer(help="The model store: ls, location, remove.", no_args_is_help=True)


# ---- models: the catalog ---------------------------------------------------------------------------------


@models_app.command("list")
def models_list(size: Optional[str] = typer.Option(None, "--size", help="tiny, small, medium, large or a size."),
                type: Optional[str] = typer.Option(None, "--type", help="instruct, base, embedding, reasoning."),
                device: Optional[str] = typer.Option(None, "--device", help="Only models with a variant for "
                                                                            "cpu, gpu or npu."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The catalog: models lokal can pull by name, with their variants per device."""
    from lokal.cli.render import format_table, human_bytes
    from lokal.store.catalog import Catalog

    rows = []
    for entry in Catalog.packaged().entries(size=size, type=type):
        variants = [v for v in entry.variants if device is None or device.lower() in v.devices]
        if not variants:
            continue
        rows.append({"name": entry.name, "type": entry.type, "parameters": entry.parameters,
                     "size_class": entry.size_class, "aliases": list(entry.aliases),
                     "variants": [{"name": v.name, "format": v.format, "devices": list(v.devices),
                                   "bytes": v.size_bytes, "foundry_id": v.foundry_id} for v in variants]})
    if as_json:
        print(json.dumps({"models": rows}, indent=2))
        return
    table = [[row["name"], row["type"], f'{row["parameters"]:g}B',
              ", ".join(sorted({d for v in row["variants"] for d in v["devices"]})),
              ", ".join(v["name"].split(":", 1)[1] for v in row["variants"]),
              human_bytes(min(v["bytes"] for v in row["variants"]))] for row in rows]
    print(format_table(["NAME", "TYPE", "PARAMS", "DEVICES", "VARIANTS", "FROM"], table), end="")


@models_app.command("pull")
def models_pull(name: str = typer.Argument(..., help="Catalog name or anything `lokal pull` accepts."),
                device: Optional[str] = typer.Option(None, "--device", help="cpu, gpu or npu: pick that variant.")
                ) -> None:
    """Pull a model, choosing the catalog variant for this machine (or for --device)."""
    from lokal.cli.models import pull_command

    pull_command(resolve_for_device(name, device))


@models_app.command("info")
def models_info(name: str = typer.Argument(..., help="Model name.")) -> None:
    """Details of a catalog entry and, when pulled, of the stored model."""
    from lokal.cli.models import show_command
    from lokal.store.catalog import Catalog

    variant = Catalog.packaged().resolve(name)
    if variant is not None:
        print(f"{variant.name}  {variant.type}, {variant.parameters:g}B parameters, {variant.format} "
              f"{variant.quant} for {', '.join(variant.devices)}; Foundry id {variant.foundry_id}; "
              f"license {variant.license}")
    from lokal.store.store import Store

    if Store(Settings().models).exists(name) or variant is None:
        show_command(name, modelfile=False, parameters=False, template=False, system=False, license=False,
                     verbose=False)


@models_app.command("test")
def models_test(name: str = typer.Argument(..., help="Model to test."),
                benchmark: bool = typer.Option(False, "--benchmark", help="Then measure TTFT and tokens/s at "
                                                                          "several concurrency levels."),
                plot: Optional[str] = typer.Option(None, "--plot", help="With --benchmark: write a PNG plot "
                                                                        "(tok/s, TTFT, memory) to this file."),
                prompt: str = typer.Option("Count from 1 to 10.", "--prompt", help="Prompt for the smoke test."),
                concurrency: str = typer.Option("1,2,4", "--concurrency", "-c",
                                                help="With --benchmark: concurrency levels, comma separated."),
                requests: int = typer.Option(8, "--requests", "-n", help="With --benchmark: requests per level."),
                max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens per answer."),
                as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Load the model, answer one prompt and report load time, TTFT, tok/s and memory (--benchmark: then a
    load test on the same loaded model, with a PNG plot via --plot or a text chart in the terminal)."""
    from rich.console import Console

    from lokal.bench import BenchConfig
    from lokal.bench_report import check_plot_dependency, render, text_chart
    from lokal.bench_report import plot as write_plot
    from lokal.cli.bench import parse_levels
    from lokal.errors import BadRequest
    from lokal.model_check import check_model

    if plot and not benchmark:
        raise BadRequest("--plot draws the benchmark: add --benchmark")
    if plot:
        check_plot_dependency()  # before minutes of measuring
    bench = None
    if benchmark:
        bench = BenchConfig(model=name, concurrency=parse_levels(concurrency), num_requests=requests,
                            max_tokens=max_tokens, prompt_tokens=32, ignore_eos=True, is_streaming=True)
    settings = Settings()
    status = Console(stderr=True)
    report = check_model(name, settings, prompt, num_predict=max_tokens, bench=bench,
                         progress=lambda message: status.print(f"[dim]{message}[/dim]"))
    memory = report.memory
    memory_bars = None if memory is None else {"before load": memory.before_load, "idle": memory.idle,
                                               "peak": memory.peak}
    if plot and report.benchmark is not None:
        status.print(f"plot written to {write_plot(report.benchmark, plot, memory_bars)}")
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    smoke = report.smoke
    print(smoke.text.strip())
    first = f"first token {smoke.first_token_ms:.0f} ms, " if smoke.first_token_ms is not None else ""
    print(f"\nload {smoke.load_seconds:.2f} s, {first}prompt {smoke.num_prompt_tokens} tokens at "
          f"{smoke.prompt_tokens_per_second:.1f} tok/s, {smoke.num_tokens} tokens at "
          f"{smoke.tokens_per_second:.1f} tok/s")
    if memory is not None:
        print(f"memory: the model takes {memory.model_idle / 1e6:.0f} MB idle, {memory.model_peak / 1e6:.0f} MB "
              f"at peak (process {memory.before_load / 1e6:.0f} MB before loading, {memory.idle / 1e6:.0f} MB "
              f"idle, {memory.peak / 1e6:.0f} MB peak)")
    if report.benchmark is not None:
        render(report.benchmark, Console())
        if not plot:
            print(text_chart(report.benchmark, memory_bars))


def resolve_for_device(name: str, device: str | None, settings: Settings | None = None) -> str:
    """The catalog variant of ``name`` for ``device`` (or this machine's first usable device of
    LOKAL_DEVICE, with LOKAL_QUANTIZATION); names outside the catalog pass through."""
    from lokal.hardware import detect
    from lokal.store.catalog import Catalog

    catalog = Catalog.packaged()
    variant = catalog.resolve(name)
    if variant is None:
        return name
    settings = settings or Settings()
    order = [device.lower()] if device else list(settings.device)
    chosen = catalog.variant_for(name, detect(), order, settings.quantization)
    print(f"{chosen.variant.name}: {chosen.reason}", file=sys.stderr)
    return chosen.variant.name


# ---- model: Foundry Local's singular verbs ------------------------------------------------------------------


@model_app.command("list")
def model_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Models in the store (as `lokal list`)."""
    from lokal.cli.models import list_command

    list_command(as_json=as_json)


@model_app.command("download")
def model_download(name: str = typer.Argument(...),
                   device: Optional[str] = typer.Option(None, "--device", help="cpu, gpu or npu")) -> None:
    """Pull a model (as `lokal models pull`)."""
    models_pull(name, device)


@model_app.command("info")
def model_info(name: str = typer.Argument(...)) -> None:
    models_info(name)


@model_app.command("run")
def model_run(name: str = typer.Argument(...), prompt: list[str] = typer.Argument(None)) -> None:
    """Chat with a model, or answer PROMPT (as `lokal run`)."""
    from lokal.cli.run import run_command

    run_command(name, prompt, verbose=False, format="", keepalive="", nowordwrap=False)


@model_app.command("load")
def model_load(name: str = typer.Argument(...),
               ttl: str = typer.Option("10m", "--ttl", help="How long it stays loaded when idle.")) -> None:
    """Load a model into the running server."""
    from lokal.client import Client

    with Client() as client:
        client.load(name, keep_alive=ttl)
    print(f"loaded {name}")


@model_app.command("unload")
def model_unload(name: str = typer.Argument(...)) -> None:
    """Unload a model from the running server (as `lokal stop`)."""
    from lokal.client import Client

    with Client() as client:
        client.stop(name)
    print(f"unloaded {name}")


# ---- service: the server in the background ----------------------------------------------------------------


def _pid_file(settings: Settings) -> Path:
    return Path(settings.models) / "serve.pid"


@service_app.command("start")
def service_start() -> None:
    """Start `lokal serve` in the background (logs in <store>/serve.log)."""
    from lokal.client import Client

    settings = Settings()
    with Client() as client:
        if client.is_running():
            print(f"lokal is already running at {settings.base_url}")
            return
    Path(settings.models).mkdir(parents=True, exist_ok=True)
    log_file = open(Path(settings.models) / "serve.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "lokal.server.serve"], stdout=log_file,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log_file.close()
    _pid_file(settings).write_text(str(process.pid))
    with Client() as client:
        for _ in range(300):
            if client.is_running():
                print(f"lokal is running at {settings.base_url} (pid {process.pid})")
                return
            if process.poll() is not None:
                break
            time.sleep(0.2)
    from lokal.cli import fail

    raise fail(f"the server did not start; see {Path(settings.models) / 'serve.log'}")


@service_app.command("stop")
def service_stop() -> None:
    """Stop the background server that `service start` started."""
    settings = Settings()
    pid_file = _pid_file(settings)
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        print("no background server started by `lokal service start` (stop a foreground one with Ctrl+C)")
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            os.kill(pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    print("lokal stopped")


@service_app.command("restart")
def service_restart() -> None:
    service_stop()
    service_start()


@service_app.command("status")
def service_status() -> None:
    """Whether a server answers at LOKAL_HOST, and what it has loaded."""
    import httpx

    settings = Settings()
    try:
        body = httpx.get(settings.base_url + "/status", timeout=5).json()
    except httpx.HTTPError:
        print(f"lokal is not running at {settings.base_url}")
        raise typer.Exit(1) from None
    print(f"lokal is running at {settings.base_url}; models in {body.get('modelDirPath')}; "
          f"loaded: {', '.join(body.get('loadedModels') or []) or 'none'}")


@service_app.command("ps")
def service_ps() -> None:
    from lokal.cli.serve import ps

    ps()


# ---- cache: the store ------------------------------------------------------------------------------------


@cache_app.command("ls")
def cache_ls() -> None:
    from lokal.cli.models import list_command

    list_command(as_json=False)


@cache_app.command("location")
def cache_location() -> None:
    print(Settings().models)


@cache_app.command("remove")
def cache_remove(names: list[str] = typer.Argument(...)) -> None:
    from lokal.cli.models import rm_command

    rm_command(names)


# ---- convert, hardware, init, deploy -------------------------------------------------------------------


def convert(model: str = typer.Argument(..., help="Stored GGUF model, or a Hugging Face safetensors folder."),
            to: str = typer.Option("onnx", "--to", help="Target format (onnx)."),
            precision: Optional[str] = typer.Option(None, "--precision", help="int4 (default), int8, fp16 or "
                                                                              "fp32; embedding models: fp32."),
            provider: str = typer.Option("cpu", "--provider", help="cpu, cuda, dml or webgpu."),
            name: Optional[str] = typer.Option(None, "--name", help="Store the result under this name.")) -> None:
    """Convert a model to ONNX (stored as e.g. smollm2:135m-onnx-int4-cpu): generative models for ONNX Runtime
    GenAI, sentence-embedding encoders (all-minilm) for ONNX Runtime."""
    from lokal.convert.onnx_export import convert_to_onnx
    from lokal.errors import BadRequest
    from lokal.store.store import Store

    if to.lower() != "onnx":
        raise BadRequest(f"--to {to!r}: only onnx is supported here (GGUF imports use `lokal create`)")
    settings = Settings()
    precision = precision.lower() if precision else None
    for progress in convert_to_onnx(Store(settings.models), model, precision=precision, provider=provider.lower(),
                                    target=name):
        print(f"[{progress.step}/{progress.total_steps}] {progress.status}", file=sys.stderr, flush=True)


def hardware(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """CPU, ISA features, memory, GPUs, NPUs, llama.cpp backends and ONNX execution providers."""
    from lokal.cli.render import human_bytes
    from lokal.hardware import detect

    found = detect()
    data = found.to_dict()
    data["preference"] = list(Settings().device)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    print(f"CPU        {found.cpu_model} ({found.cores_physical} cores, {found.cores_logical} threads, "
          f"{found.arch})")
    print(f"ISA        {', '.join(found.isa) or 'none detected'}")
    print(f"Memory     {human_bytes(found.memory_total)} total, {human_bytes(found.memory_available)} available")
    for gpu in found.gpus:
        print(f"GPU        {gpu.vendor} {gpu.name}" + (f", {human_bytes(gpu.memory)}" if gpu.memory else ""))
    for npu in found.npus:
        print(f"NPU        {npu.vendor} {npu.name}")
    if not found.gpus:
        print("GPU        none found")
    if not found.npus:
        print("NPU        none found")
    print(f"llama.cpp  {', '.join(found.llama_backends)}")
    print(f"ONNX       {', '.join(found.onnx_providers) or 'not installed (pip install lokal[onnx])'}")
    print(f"Devices    {', '.join(data['devices'])} usable; preference {' > '.join(data['preference'])}")


def init(config: Path = typer.Option(Path("lokal.json"), "--config", help="Where to write the starter config."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing file.")) -> None:
    """Create the model store and write a commented starter deployment config."""
    from lokal.deploy_config import STARTER
    from lokal.errors import BadRequest

    settings = Settings()
    Path(settings.models).mkdir(parents=True, exist_ok=True)
    if config.exists() and not force:
        raise BadRequest(f"{config} exists; use --force to overwrite it")
    config.write_text(STARTER)
    print(f"model store: {settings.models}\nstarter config: {config} (edit it, then `lokal deploy --config "
          f"{config}`)")


def deploy(config: Path = typer.Option(..., "--config", help="Deployment config (JSON or YAML)."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Validate and show the plan; change nothing."),
           port: Optional[int] = typer.Option(None, "--port", help="Overrides deployment.api.port.")) -> None:
    """Validate a deployment config, pull or convert its model, and serve with its settings (the model loaded
    at start)."""
    from lokal.deploy_config import load
    from lokal.store.sources import pull
    from lokal.store.store import Store

    plan = load(config)
    overrides: dict[str, Any] = {"config": str(config)}
    if port is not None:
        overrides["host"] = f"{Settings(overrides={'config': str(config)}).host[0]}:{port}"
    settings = Settings(overrides=overrides)
    model = plan.deployment.model
    # The file's hardware preference and quantization choose the variant, as they do at load.
    target = resolve_for_device(model, None, settings) if model else None
    print(f"deployment config {config} is valid")
    for name, value, source, _ in settings.rows():
        if source in ("file", "flag") and name != "LOKAL_CONFIG":
            print(f"  {name}={value}  ({source})")
    if target:
        print(f"  model: {target}")
    if dry_run:
        return
    if target:
        store = Store(settings.models)
        if not store.exists(target):
            from lokal.cli.render import show_pull

            print(f"pulling {target}" + (" (converting it here)" if _is_converted(target) else ""),
                  file=sys.stderr, flush=True)
            show_pull(pull(store, target, settings))
        if not settings.preload:  # LOKAL_PRELOAD from the environment or a flag wins
            settings = Settings(overrides={**overrides, "preload": target})
    from lokal.server.serve import serve as run_server

    run_server(settings)


def _is_converted(name: str) -> bool:
    """Whether the catalog makes this variant here with `lokal convert` rather than downloading it."""
    from lokal.store.catalog import Catalog

    variant = Catalog.packaged().resolve(name)
    return variant is not None and any(source.kind == "convert" for source in variant.sources)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.add_typer(model_app, name="model")
    app.add_typer(service_app, name="service")
    app.add_typer(cache_app, name="cache")
    app.command("convert")(convert)
    app.command("hardware")(hardware)
    app.command("init")(init)
    app.command("deploy")(deploy)
