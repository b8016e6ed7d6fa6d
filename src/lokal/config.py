"""Every setting lokal reads, declared once with its default and description.

Precedence: explicit overrides (CLI flags) > LOKAL_* environment > OLLAMA_* twin > deployment config file
(``LOKAL_CONFIG``, deploy_config.py) > default.
This is the only module that reads ``os.environ``; everything else asks a ``Settings`` object.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from lokal.errors import ConfigError
from lokal.hardware import KV_CACHE_TYPES

DEFAULT_PORT = 11434


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {raw!r}")


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(raw: str | int | float) -> float:
    """Seconds from Ollama's duration forms: ``5m``, ``1h30m``, ``90s``, ``300`` (seconds), ``-1`` (forever).

    A negative result means "keep forever"; ``0`` means "unload now".
    """
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    text = str(raw).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {raw!r}: use e.g. 30s, 5m, 1h, 300 or -1")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def parse_host(raw: str) -> tuple[str, int]:
    """``host[:port]``, with an optional ``http://`` scheme, as OLLAMA_HOST accepts it."""
    text = raw.strip()
    text = re.sub(r"^https?://", "", text).rstrip("/")
    if not text:
        return "127.0.0.1", DEFAULT_PORT
    if text.startswith("["):  # [::1]:port
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if port and not port.isdigit():
        raise ValueError(f"invalid port in {raw!r}")
    return host or "127.0.0.1", int(port) if port else DEFAULT_PORT


def parse_optional_bool(raw: str) -> bool | None:
    """A boolean, or None for "auto" (or empty): lokal decides."""
    return None if raw.strip().lower() in ("auto", "") else parse_bool(raw)


def parse_optional_int(raw: str) -> int | None:
    return int(raw) if raw.strip() else None


def parse_kv_cache_type(raw: str) -> str:
    value = raw.strip().lower()
    if value not in KV_CACHE_TYPES:
        raise ValueError(f"expected one of {', '.join(KV_CACHE_TYPES)}, got {raw!r}")
    return value


LOG_FORMATS = ("text", "json")


def parse_log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}, got {raw!r}")
    return value


def parse_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


AUTH_MODES = ("auto", "on", "off")


def parse_auth_mode(raw: str) -> str:
    value = raw.strip().lower()
    if value not in AUTH_MODES:
        raise ValueError(f"expected one of {', '.join(AUTH_MODES)}, got {raw!r}")
    return value


def parse_optional_path(raw: str) -> Path | None:
    return Path(raw).expanduser() if raw.strip() else None


def parse_encryption_key(raw: str) -> bytes | None:
    text = raw.strip()
    if not text:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError("expected 64 hex digits (a 32-byte AES-256 key)")
    return key


def parse_devices(raw: str) -> list[str]:
    devices = [item.lower() for item in parse_list(raw)]
    unknown = [d for d in devices if d not in ("cpu", "gpu", "npu")]
    if unknown or not devices:
        raise ValueError(f"expected devices from cpu, gpu, npu in order of preference, got {raw!r}")
    return devices


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    description: str
    parse: Callable[[str], Any] = str
    ollama_alias: str | None = None
    is_secret: bool = False  # shown as *** by `lokal config`


SETTINGS: tuple[Setting, ...] = (
    Setting("LOKAL_HOST", "127.0.0.1:11434", "Address the server binds and clients call (host[:port]).",
            parse_host, "OLLAMA_HOST"),
    Setting("LOKAL_MODELS", "~/.lokal/models", "Model store directory (Ollama layout; ~/.ollama/models works).",
            lambda raw: Path(raw).expanduser(), "OLLAMA_MODELS"),
    Setting("LOKAL_KEEP_ALIVE", "5m", "How long an idle model stays loaded (0 unloads at once, -1 keeps forever).",
            parse_duration, "OLLAMA_KEEP_ALIVE"),
    Setting("LOKAL_NUM_PARALLEL", "4", "Sequences each loaded model decodes at once (continuous batching slots).",
            int, "OLLAMA_NUM_PARALLEL"),
    Setting("LOKAL_MAX_LOADED_MODELS", "3", "Most models kept loaded at once; idle ones are evicted LRU.",
            int, "OLLAMA_MAX_LOADED_MODELS"),
    Setting("LOKAL_MAX_QUEUE", "512", "Most requests waiting for a model; beyond it the server answers 503 busy.",
            int, "OLLAMA_MAX_QUEUE"),
    Setting("LOKAL_CONTEXT_LENGTH", "", "Context length per sequence (default 4096, or the model's if smaller).",
            parse_optional_int, "OLLAMA_CONTEXT_LENGTH"),
    Setting("LOKAL_PROMPT_CACHE", "512", "MiB of memory per model for idle requests' KV, kept for prompts that "
            "continue them (0: none).", int),
    Setting("LOKAL_DRAFT_NUM_PREDICT", "0", "Speculative decoding: most tokens guessed ahead per step by prompt "
            "lookup (copying what followed the same words earlier), or by a model's DRAFT model (8 when 0), "
            "checked in the same decode (0: off).", int),
    Setting("LOKAL_KV_CACHE_TYPE", "f16", "KV cache element type: f16, q8_0 (half of f16's memory) or q4_0.",
            parse_kv_cache_type, "OLLAMA_KV_CACHE_TYPE"),
    Setting("LOKAL_FLASH_ATTENTION", "auto", "Flash attention where llama.cpp supports it for the model (auto: "
            "on, unless this llama.cpp build runs it slowly).", parse_optional_bool, "OLLAMA_FLASH_ATTENTION"),
    Setting("LOKAL_NUM_THREAD", "", "CPU threads for inference (default: physical cores).",
            parse_optional_int, "OLLAMA_NUM_THREAD"),
    Setting("LOKAL_ORIGINS", "", "Extra allowed CORS origins, comma separated.", parse_list, "OLLAMA_ORIGINS"),
    Setting("LOKAL_REGISTRY", "https://registry.ollama.ai", "Ollama-protocol registry that `pull` talks to.",
            lambda raw: raw.rstrip("/"), "OLLAMA_REGISTRY"),
    Setting("LOKAL_DEBUG", "0", "Verbose logs, including llama.cpp's own output.", parse_bool, "OLLAMA_DEBUG"),
    Setting("LOKAL_CONFIG", "", "Deployment config file (JSON or YAML, Foundry Local's shape): values below the "
            "environment and flags.", lambda raw: Path(raw).expanduser() if raw.strip() else None),
    Setting("LOKAL_NUM_BATCH", "512", "Most tokens one engine step computes (num_batch).", int),
    Setting("LOKAL_OPENAI_API", "1", "Serve the OpenAI API under /v1 (0 removes it).", parse_bool),
    Setting("LOKAL_DEVICE", "gpu,npu,cpu", "Devices in order of preference (cpu, gpu, npu): picks catalog variants "
            "at pull and the ONNX execution provider at load.", parse_devices),
    Setting("LOKAL_QUANTIZATION", "dynamic", "Variant `deploy` pulls: dynamic (best fit for the device) or a "
            "quantization such as q4_k_m or int4.", lambda raw: raw.strip().lower() or "dynamic"),
    Setting("LOKAL_PREFIX_REUSE", "1", "Reuse the KV of a cached prompt prefix (0 recomputes every prompt).",
            parse_bool),
    Setting("LOKAL_LOG_FORMAT", "text", "Server log format: text (for people) or json (one object per line, with "
            "request ids).", parse_log_format),
    Setting("LOKAL_PRELOAD", "", "Models the server loads at start, kept loaded until a request's keep_alive "
            "says otherwise (comma separated); /ready answers 200 once they are in.", parse_list),
    # security (lokal.security; README "Security")
    Setting("LOKAL_AUTH", "auto", "API keys: auto (required on any bind beyond loopback), on (always), off "
            "(never; needs LOKAL_INSECURE_NO_AUTH=1).", parse_auth_mode),
    Setting("LOKAL_INSECURE_NO_AUTH", "0", "Confirms LOKAL_AUTH=off: anyone who reaches the port may do anything.",
            parse_bool),
    Setting("LOKAL_API_KEY", "", "Key the CLI and SDK send to a server (Authorization: Bearer).",
            is_secret=True),
    Setting("LOKAL_KEYS_FILE", "", "API key file (default: <LOKAL_MODELS>/security/keys.json).", parse_optional_path),
    Setting("LOKAL_AUDIT_LOG", "", "Audit log file (default: <LOKAL_MODELS>/security/audit.log).", parse_optional_path),
    Setting("LOKAL_AUDIT_CONTENT", "0", "Also record prompts in the audit log (off: never any text).", parse_bool),
    Setting("LOKAL_AUDIT_MAX_BYTES", "67108864", "Audit log size that starts a new file (the chain continues).",
            int),
    Setting("LOKAL_AUDIT_FSYNC", "1", "fsync each audit line before the request is answered (0: leave it to "
            "the OS, faster, the last lines may be lost in a power cut).", parse_bool),
    Setting("LOKAL_RATE_LIMIT_REQUESTS", "0", "Requests per minute per API key (0: no limit; a key may set its "
            "own).", int),
    Setting("LOKAL_RATE_LIMIT_TOKENS", "0", "Tokens (in + out) per minute per API key (0: no limit).", int),
    Setting("LOKAL_ALLOWED_HOSTS", "", "Extra Host header names a loopback-bound server answers (against DNS "
            "rebinding), comma separated.", parse_list),
    Setting("LOKAL_ALLOW_PRIVATE_PULLS", "0", "Let server-side URL pulls reach private, loopback and link-local "
            "addresses (SSRF guard off).", parse_bool),
    Setting("LOKAL_TLS_CERT", "", "PEM certificate (chain) to serve HTTPS with.", parse_optional_path),
    Setting("LOKAL_TLS_KEY", "", "PEM private key for LOKAL_TLS_CERT.", parse_optional_path),
    Setting("LOKAL_CA_CERT", "", "PEM CA bundle the CLI and SDK trust for an https:// server.", parse_optional_path),
    Setting("LOKAL_ENCRYPTION_KEY", "", "Encrypt model blobs at rest with this key (64 hex digits = 32 bytes).",
            parse_encryption_key, is_secret=True),
    Setting("LOKAL_ENCRYPTION_KEY_FILE", "", "File holding the encryption key (made by `lokal encrypt "
            "--new-key FILE`).", parse_optional_path),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def _attribute(name: str) -> str:
    return name.removeprefix("LOKAL_").lower()


class Settings:
    """Resolved settings. Attribute names are the variable names without ``LOKAL_``, lower-cased
    (``settings.num_parallel``); ``source(name)`` says where each value came from."""

    def __init__(self, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None):
        env = os.environ if environ is None else environ
        overrides = {k.upper() if k.upper().startswith("LOKAL_") else "LOKAL_" + k.upper(): v
                     for k, v in (overrides or {}).items() if v is not None}
        file_values = _file_values(overrides.get("LOKAL_CONFIG") or env.get("LOKAL_CONFIG", ""))
        self._values: dict[str, Any] = {}
        self._raw: dict[str, str] = {}
        self._sources: dict[str, str] = {}
        for setting in SETTINGS:
            if setting.name in overrides:
                raw, source = overrides[setting.name], "flag"
            elif env.get(setting.name, "") != "":
                raw, source = env[setting.name], setting.name
            elif setting.ollama_alias and env.get(setting.ollama_alias, "") != "":
                raw, source = env[setting.ollama_alias], setting.ollama_alias
            elif setting.name in file_values:
                raw, source = file_values[setting.name], "file"
            else:
                raw, source = setting.default, "default"
            try:
                value = setting.parse(raw) if isinstance(raw, str) else raw
            except ValueError as exc:
                raise ConfigError(f"{source if source != 'default' else setting.name}: {exc}") from None
            self._values[setting.name] = value
            self._raw[setting.name] = str(raw)
            self._sources[setting.name] = source
        if self.num_parallel < 1:
            raise ConfigError("LOKAL_NUM_PARALLEL must be at least 1")
        if self.max_loaded_models < 1:
            raise ConfigError("LOKAL_MAX_LOADED_MODELS must be at least 1")
        if self.draft_num_predict < 0:
            raise ConfigError("LOKAL_DRAFT_NUM_PREDICT must be 0 or more")
        if self.prompt_cache < 0:
            raise ConfigError("LOKAL_PROMPT_CACHE must be 0 or more (MiB)")

    def __getattr__(self, attribute: str) -> Any:
        name = "LOKAL_" + attribute.upper()
        if name not in _BY_NAME:
            raise AttributeError(attribute)
        return self._values[name]

    def source(self, name: str) -> str:
        return self._sources[name]

    def raw(self, name: str) -> str:
        return self._raw[name]

    @property
    def base_url(self) -> str:
        """URL a client on this machine uses to reach the server (0.0.0.0 binds mean loopback; https when
        LOKAL_TLS_CERT is set or LOKAL_HOST says https://)."""
        host, port = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        is_https = self.tls_cert is not None or self.raw("LOKAL_HOST").strip().lower().startswith("https://")
        return f"{'https' if is_https else 'http'}://{host}:{port}"

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(name, value, source, description) for `lokal config` and `serve --help`."""
        return [(s.name, "***" if s.is_secret and self._raw[s.name] else self._raw[s.name], self._sources[s.name],
                 s.description) for s in SETTINGS]


def _file_values(path: Any) -> dict[str, str]:
    """The LOKAL_* values a deployment config file sets (none without a file)."""
    if not path or not str(path).strip():
        return {}
    from lokal.deploy_config import load

    return load(Path(str(path)).expanduser()).to_settings()


def env_flag(name: str) -> str | None:
    """A non-lokal variable that a library honours itself (HF_ENDPOINT, HF_TOKEN, NO_COLOR, …).

    Read here so that config.py stays the only reader of the environment."""
    return os.environ.get(name) or None


def physical_cores() -> int:
    """Physical cores (llama.cpp runs best with one thread each); falls back to logical count."""
    try:
        siblings: set[str] = set()
        for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list"):
            siblings.add(cpu.read_text().strip())
        if siblings:
            return len(siblings)
    except OSError:
        pass
    return os.cpu_count() or 1
