"""Typed errors. The store and engine raise these; the edges (CLI, HTTP) map them to messages and statuses.

``status`` is the HTTP status the server answers with; the message is what the user reads.
"""

from __future__ import annotations


class LokalError(Exception):
    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(LokalError):
    status = 400


class ConfigError(BadRequest):
    pass


class InvalidModelName(BadRequest):
    pass


class InvalidDigest(BadRequest):
    pass


class NotFound(LokalError):
    """Something other than a model that the request names does not exist (e.g. a stored response)."""

    status = 404


class ModelNotFound(LokalError):
    status = 404

    def __init__(self, name: str, message: str | None = None):
        super().__init__(message or f'model "{name}" not found, try pulling it first')
        self.name = name


class PullError(LokalError):
    """A pull that could not complete; what was downloaded so far is kept for resuming."""

    status = 502


class DigestMismatch(PullError):
    def __init__(self, expected: str, actual: str):
        super().__init__(f"digest mismatch: expected {expected}, got {actual}; nothing was stored")
        self.expected = expected
        self.actual = actual


class StoreError(LokalError):
    """The store on disk is not as expected (corrupt manifest, missing blob, disk full)."""

    status = 500


class DiskFull(StoreError):
    status = 507


class MissingPackage(LokalError):
    """A bundled model whose pip package is not installed."""

    status = 404


class ContextOverflow(BadRequest):
    pass


class UnsupportedCapability(BadRequest):
    pass


class ModelLoadError(LokalError):
    status = 500


class ServerBusy(LokalError):
    status = 503

    def __init__(self, message: str = "server busy, please try again", retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class Unauthorized(LokalError):
    """No API key, or one that is unknown, revoked or expired."""

    status = 401


class Forbidden(LokalError):
    """A key whose role (or model allowlist) does not cover the request; a Host header not allowed."""

    status = 403


class RateLimited(LokalError):
    status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class IntegrityError(LokalError):
    """A stored blob whose bytes are not what its digest says (tampered or corrupted on disk)."""

    status = 500


class DecryptionError(LokalError):
    """An encrypted blob that the configured key cannot open (wrong key, or damaged)."""

    status = 500


class InsufficientMemory(LokalError):
    status = 507


class Cancelled(LokalError):
    status = 499

    def __init__(self, message: str = "request cancelled"):
        super().__init__(message)


class ServerUnavailable(LokalError):
    """No lokal server answers at the address a client was given (``lokal.Client``)."""

    status = 503


class MissingDependency(LokalError):
    """An optional feature whose Python package is not installed; the message says what to install."""

    status = 500
