"""Run the server: bind LOKAL_HOST, say where it listens, serve until SIGTERM/SIGINT, shut down cleanly.

On shutdown the runtime is closed first, so running streams end with an error line at once (instead of
holding the shutdown until they finish) and models unload; then uvicorn closes the connections.
``python -m lokal.server.serve`` runs it without the CLI.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import threading
from typing import Any

import uvicorn

from lokal.config import Settings
from lokal.errors import ConfigError

log = logging.getLogger("lokal.server")

# Seconds running requests get to finish after the runtime closed, before their tasks are cancelled.
GRACEFUL_SHUTDOWN_SECONDS = 10


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Any):
        super().__init__(config)
        self.runtime = runtime

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.runtime.close()
        await super().shutdown(sockets=sockets)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a ConfigError that says what to do when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"{host}:{port} is already in use (is another lokal or ollama server running?); "
                              f"stop it or set LOKAL_HOST to another address, e.g. LOKAL_HOST=127.0.0.1:11435"
                              ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings) -> None:
    """Serve until interrupted. Raises ConfigError when the address cannot be bound."""
    from lokal.engine import set_llama_logging
    from lokal.runtime import Runtime
    from lokal.server.app import create_app
    from lokal.server.logs import configure_logging
    from lokal.security.keys import KeyStore
    from lokal.security.policy import check_serve_allowed, keys_path

    check_serve_allowed(settings, KeyStore(keys_path(settings)).has_active_keys())
    tls = tls_options(settings)
    host, port = settings.host
    sock = bind(host, port)
    configure_logging(bool(settings.debug), settings.log_format)
    set_llama_logging(bool(settings.debug))
    runtime = Runtime(settings)
    # lokal.access writes the access lines (with request ids and tokens) and logs.py formats uvicorn's own.
    config = uvicorn.Config(create_app(runtime), log_level="debug" if settings.debug else "info",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, server_header=False,
                            access_log=False, log_config=None, **tls)
    shown_host = f"[{host}]" if ":" in host else host
    scheme = "https" if tls else "http"
    banner = f"lokal {_version()} listening on {scheme}://{shown_host}:{port} (models in {settings.models})"
    if settings.log_format == "json":
        log.info("%s", banner)  # every line a JSON object
    else:
        print(banner, file=sys.stderr, flush=True)
    _exit_zero_on_stop_signals()
    _Server(config, runtime).run(sockets=[sock])


def tls_options(settings: Settings) -> dict[str, str]:
    """uvicorn's TLS arguments from LOKAL_TLS_CERT/KEY (both or neither), checked to load before binding."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise ConfigError("TLS needs both a certificate and its key: set --tls-cert and --tls-key "
                          "(LOKAL_TLS_CERT and LOKAL_TLS_KEY)")
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the TLS certificate {cert} with key {key}: {exc}") from None
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def _exit_zero_on_stop_signals() -> None:
    """uvicorn re-raises the stop signal once it has shut down; with this handler in place the process
    then exits with status 0 (a requested stop is not a failure) instead of dying by the signal."""
    if threading.current_thread() is not threading.main_thread():
        return

    def exit_quietly(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, exit_quietly)


def _version() -> str:
    from lokal import __version__

    return __version__


def main() -> None:
    from lokal.errors import LokalError

    try:
        serve(Settings())
    except LokalError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
