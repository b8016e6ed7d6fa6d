"""Deployment config: Foundry Local's production JSON (or the same in YAML), validated, mapped onto settings.

::

    {"deployment": {"model": "phi-4-mini",
                    "hardware": {"preferred": "npu", "fallback": ["gpu", "cpu"]},
                    "optimization": {"quantization": "dynamic", "batch_size": 8, "max_context": 4096},
                    "api": {"port": 8080, "openai_compatible": true}},
     "performance": {"batch_processing": true, "parallel_requests": 4,
                     "memory_optimization": {"enable_kv_cache": true, "max_cache_size": "2GB"},
                     "hardware_scheduling": {"enable_dynamic_batching": true, "max_batch_size": 16}}}

Each field becomes a ``LOKAL_*`` setting (``to_settings``), which config.py ranks below the environment and
flags: flags > env > file > defaults. Validation errors name the JSON path and the allowed values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lokal.errors import ConfigError

Device = Literal["cpu", "gpu", "npu"]
QUANTIZATIONS = ("dynamic", "q4_0", "q4_1", "q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "f32",
                 "int4", "int8", "fp16", "fp32")
Quantization = Literal["dynamic", "q4_0", "q4_1", "q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "f32",
                       "int4", "int8", "fp16", "fp32"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hardware(_Section):
    preferred: Device = "gpu"
    """Device tried first: picks the catalog variant and the ONNX execution provider."""
    fallback: list[Device] = ["npu", "cpu"]
    """Devices tried next, in order, when the preferred one is missing or has no variant."""


class Optimization(_Section):
    quantization: Quantization = "dynamic"
    """Variant to pull or convert; "dynamic" = the best fitting variant for the chosen device."""
    batch_size: int = Field(512, ge=1, le=65536)
    """Most tokens one engine step computes (num_batch)."""
    max_context: int | None = Field(None, ge=16)
    """Context length per request (num_ctx); default the model's, at most 4096."""


class Api(_Section):
    port: int = Field(11434, ge=1, le=65535)
    """Port the server listens on."""
    openai_compatible: bool = True
    """Serve the OpenAI API under /v1; false removes it."""


class Deployment(_Section):
    model: str | None = None
    """Model to pull (or convert) before serving, e.g. "phi-4-mini" or "smollm2"."""
    hardware: Hardware = Hardware()
    optimization: Optimization = Optimization()
    api: Api = Api()


class MemoryOptimization(_Section):
    enable_kv_cache: bool = True
    """Reuse the KV of a cached prompt prefix; false recomputes every prompt."""
    max_cache_size: str | int = "512MB"
    """Memory for idle requests' cached KV, e.g. "2GB", "512MB" or a number of MiB."""


class HardwareScheduling(_Section):
    enable_dynamic_batching: bool = True
    """Continuous batching across requests; false serves one request at a time per model."""
    max_batch_size: int | None = Field(None, ge=1, le=1024)
    """Most sequences decoded together in one step (caps parallel_requests)."""


class Performance(_Section):
    batch_processing: bool = True
    """Batch concurrent requests; false is the same as enable_dynamic_batching false."""
    parallel_requests: int = Field(4, ge=1, le=1024)
    """Requests each model decodes at once (num_parallel)."""
    memory_optimization: MemoryOptimization = MemoryOptimization()
    hardware_scheduling: HardwareScheduling = HardwareScheduling()


class DeploymentConfig(_Section):
    deployment: Deployment = Deployment()
    performance: Performance = Performance()

    def to_settings(self) -> dict[str, str]:
        """The LOKAL_* values this file sets (raw strings, parsed by config.SETTINGS like the environment)."""
        deployment, performance = self.deployment, self.performance
        batching = performance.batch_processing and performance.hardware_scheduling.enable_dynamic_batching
        parallel = performance.parallel_requests if batching else 1
        if performance.hardware_scheduling.max_batch_size is not None:
            parallel = min(parallel, performance.hardware_scheduling.max_batch_size)
        values = {
            "LOKAL_HOST": f"127.0.0.1:{deployment.api.port}",
            "LOKAL_OPENAI_API": "1" if deployment.api.openai_compatible else "0",
            "LOKAL_NUM_PARALLEL": str(parallel),
            "LOKAL_NUM_BATCH": str(deployment.optimization.batch_size),
            "LOKAL_DEVICE": ",".join(dict.fromkeys([deployment.hardware.preferred, *deployment.hardware.fallback])),
            "LOKAL_QUANTIZATION": deployment.optimization.quantization,
            "LOKAL_PREFIX_REUSE": "1" if performance.memory_optimization.enable_kv_cache else "0",
            "LOKAL_PROMPT_CACHE": str(_mebibytes(performance.memory_optimization.max_cache_size)),
        }
        if deployment.optimization.max_context is not None:
            values["LOKAL_CONTEXT_LENGTH"] = str(deployment.optimization.max_context)
        return values


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 1024, "mib": 1024**2, "gib": 1024**3,
          "tib": 1024**4}


def _mebibytes(size: str | int) -> int:
    if isinstance(size, int):
        return size
    match = _SIZE.match(size)
    if not match:
        raise ConfigError(f'performance.memory_optimization.max_cache_size: {size!r} is not a size; use e.g. '
                          f'"2GB", "512MB" or a number of MiB')
    number, unit = float(match.group(1)), (match.group(2) or "mib").lower()
    return int(number * _UNITS[unit] / 1024**2)


def parse(data: Any, origin: str = "config") -> DeploymentConfig:
    """Validate parsed JSON/YAML; errors name the JSON path and the allowed values."""
    try:
        config = DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid deployment config {origin}:\n" + "\n".join(
            f"  {_path(error['loc'])}: {_explain(error)}" for error in exc.errors())) from None
    _mebibytes(config.performance.memory_optimization.max_cache_size)  # checks the size's spelling
    return config


def load(path: str | Path) -> DeploymentConfig:
    """Read a deployment config file: JSON, or YAML by extension (.yaml/.yml)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read deployment config {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError("YAML deployment configs need PyYAML: pip install pyyaml") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(_strip_comments(text))
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return parse(data if data is not None else {}, str(path))


def _strip_comments(text: str) -> str:
    """Drop whole-line ``//`` comments (the starter config `lokal init` writes carries some)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def _path(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location if not str(part).startswith(("function-", "literal["))]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "(top level)"


def _explain(error: dict[str, Any]) -> str:
    context = error.get("ctx") or {}
    kind = error.get("type", "")
    given = error.get("input")
    if kind == "literal_error":
        return f"{given!r} is not allowed; allowed values: {context.get('expected', '')}"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"{given!r}: {error['msg'].lower()}"
    return f"{error['msg']} (got {given!r})"


STARTER = """\
// lokal deployment config (Foundry Local's production.json shape). `lokal deploy --config FILE` reads it;
// `//` comment lines are allowed. Environment variables and command-line flags override what is set here.
{
  "deployment": {
    // A catalog name (phi-4-mini, qwen2.5:1.5b, smollm2) or anything `lokal pull` accepts.
    "model": "smollm2",
    // Devices in order of preference: cpu, gpu, npu. Picks the catalog variant and the ONNX provider.
    "hardware": {"preferred": "cpu", "fallback": ["cpu"]},
    // quantization: dynamic (best fit for the device), q4_k_m, q8_0, f16, int4 (ONNX) ...
    // batch_size: tokens per engine step; max_context: tokens per request.
    "optimization": {"quantization": "dynamic", "batch_size": 512, "max_context": 4096},
    // openai_compatible false serves only the Ollama and Foundry APIs.
    "api": {"port": 11434, "openai_compatible": true}
  },
  "performance": {
    // Requests decoded together per model (continuous batching); false/1 = one at a time.
    "batch_processing": true,
    "parallel_requests": 4,
    // enable_kv_cache: reuse cached prompt prefixes; max_cache_size: memory for idle requests' KV.
    "memory_optimization": {"enable_kv_cache": true, "max_cache_size": "512MB"},
    // max_batch_size caps the sequences one step decodes.
    "hardware_scheduling": {"enable_dynamic_batching": true, "max_batch_size": 16}
  }
}
"""
