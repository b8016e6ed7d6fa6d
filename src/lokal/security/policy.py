"""Who must show a key, where the key file and audit log live, and when ``lokal serve`` refuses to start."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from lokal.errors import ConfigError

SECURITY_DIR = "security"


def keys_path(settings: Any) -> Path:
    return settings.keys_file or Path(settings.models) / SECURITY_DIR / "keys.json"


def audit_path(settings: Any) -> Path:
    return settings.audit_log or Path(settings.models) / SECURITY_DIR / "audit.log"


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_auth_required(settings: Any) -> bool:
    """auto: a key on any bind beyond loopback; on: always; off: never."""
    mode = settings.auth
    if mode == "on":
        return True
    if mode == "off":
        return False
    host, _ = settings.host
    return not is_loopback(host)


def check_serve_allowed(settings: Any, has_active_keys: bool) -> None:
    """Refuse to start a server nobody could use safely, saying what to do instead."""
    host, port = settings.host
    if settings.auth == "off" and not settings.insecure_no_auth:
        raise ConfigError("LOKAL_AUTH=off lets anyone who reaches the port delete models and read everything; "
                          "confirm with `lokal serve --insecure-no-auth` (LOKAL_INSECURE_NO_AUTH=1), or use "
                          "--auth auto")
    if is_auth_required(settings) and not has_active_keys:
        where = f"{host}:{port}"
        raise ConfigError(
            f"refusing to serve on {where} without API keys: anyone who reaches it could use and delete "
            f"models. Create a key first with `lokal keys create --role admin` (keys live in "
            f"{keys_path(settings)}), or bind to loopback with --host 127.0.0.1:{port}")
