"""API keys: created once and shown once, stored only as a salted scrypt hash in a 0600 JSON file.

A key reads ``lokal-<id>-<secret>``: the id (public, 8 hex digits) finds the record, the secret is checked
against the hash. scrypt (hashlib's, n=2**14, r=8, p=1) costs tens of milliseconds by design, so a key that
verified once is remembered in memory by the sha256 of its text until the file changes.

The file is shared between the server and ``lokal keys``: every write takes an exclusive lock, re-reads,
changes, and atomically replaces the file. The server picks up changes (a revoked key) by the file's
modification time, and records last-used times in memory, writing them back at most once a minute.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from lokal.errors import BadRequest, StoreError
from lokal.security.roles import Role

KEY_PREFIX = "lokal"
_KEY = re.compile(r"lokal-([0-9a-f]{8})-([A-Za-z0-9_\-]{20,})")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# How often the server writes last-used times back to the file.
LAST_USED_FLUSH_SECONDS = 60.0


def _now() -> float:
    return time.time()


def _scrypt(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)


def parse_expiry(text: str | None) -> float | None:
    """``30d``, ``12h``, ``90m`` or ``2w`` from now → a Unix time; ``None``/``never`` → no expiry."""
    if text is None or text.strip().lower() in ("", "never"):
        return None
    match = re.fullmatch(r"(\d+)([mhdw])", text.strip().lower())
    if not match:
        raise BadRequest(f"invalid expiry {text!r}: use e.g. 90m, 12h, 30d or 2w")
    seconds = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[match.group(2)]
    return _now() + int(match.group(1)) * seconds


@dataclass
class KeyRecord:
    id: str
    name: str
    role: str
    created_at: float
    salt: str
    hash: str
    expires_at: float | None = None
    models: list[str] = field(default_factory=list)  # glob patterns; empty = every model
    requests_per_minute: int | None = None  # None: the server's default
    tokens_per_minute: int | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None

    @property
    def role_value(self) -> Role:
        return Role.parse(self.role)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= _now()

    def may_use_model(self, model: str) -> bool:
        if not self.models:
            return True
        name = model.strip().lower()
        candidates = {name, name.removesuffix(":latest")}
        return any(fnmatch.fnmatchcase(candidate, pattern.lower())
                   for pattern in self.models for candidate in candidates)

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(_scrypt(secret, bytes.fromhex(self.salt)).hex(), self.hash)


@dataclass
class CreatedKey:
    record: KeyRecord
    key: str  # the only time the full key exists outside its holder


class KeyStore:
    """The key file. Safe to use from the CLI while a server uses the same file."""

    def __init__(self, path: Path | str):
        self.path = Path(path).expanduser()
        self._records: dict[str, KeyRecord] = {}
        self._loaded_mtime: float | None = None
        self._verified: dict[str, str] = {}  # sha256(key text) → key id
        self._used: dict[str, float] = {}  # key id → last use not yet written to the file
        self._last_flush = _now()
        self._mutex = threading.Lock()

    # -- the file ------------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, KeyRecord]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
            return {entry["id"]: KeyRecord(**entry) for entry in data.get("keys", [])}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StoreError(f"the key file {self.path} is corrupt: {exc}") from None

    def _write(self, records: dict[str, KeyRecord]) -> None:
        data = {"keys": [asdict(record) for record in records.values()]}
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=1)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        os.chmod(self.path, 0o600)

    def _refresh(self) -> None:
        """Re-read the file when it changed on disk (a key created or revoked by `lokal keys`)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._loaded_mtime:
            self._records = self._read()
            self._loaded_mtime = mtime  # verified keys stay verified: records are revoked, never replaced

    # -- management (the CLI) ----------------------------------------------------------------------------

    def create(self, role: Role | str, *, name: str = "", expires: str | None = None,
               models: list[str] | None = None, requests_per_minute: int | None = None,
               tokens_per_minute: int | None = None) -> CreatedKey:
        role_value = role if isinstance(role, Role) else Role.parse(role)
        for limit in (requests_per_minute, tokens_per_minute):
            if limit is not None and limit < 1:
                raise BadRequest("rate limits must be at least 1 per minute")
        expires_at = parse_expiry(expires)
        with self._locked():
            records = self._read()
            key_id = secrets.token_hex(4)
            while key_id in records:
                key_id = secrets.token_hex(4)
            secret = secrets.token_urlsafe(32)
            salt = secrets.token_bytes(16)
            record = KeyRecord(id=key_id, name=name or f"key-{key_id}", role=role_value.label,
                               created_at=_now(), salt=salt.hex(), hash=_scrypt(secret, salt).hex(),
                               expires_at=expires_at, models=list(models or []),
                               requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute)
            records[key_id] = record
            self._write(records)
        return CreatedKey(record, f"{KEY_PREFIX}-{key_id}-{secret}")

    def list(self) -> list[KeyRecord]:
        with self._mutex:
            self._refresh()
            return sorted(self._records.values(), key=lambda record: record.created_at)

    def revoke(self, key_id_or_name: str) -> KeyRecord:
        with self._locked():
            records = self._read()
            matches = [r for r in records.values() if key_id_or_name in (r.id, r.name) and r.revoked_at is None]
            if not matches:
                raise BadRequest(f"no active key with id or name {key_id_or_name!r} (see `lokal keys list`)")
            if len(matches) > 1:
                raise BadRequest(f"several keys are named {key_id_or_name!r}; revoke one by its id")
            matches[0].revoked_at = _now()
            self._write(records)
            return matches[0]

    def has_active_keys(self) -> bool:
        return any(record.is_active for record in self.list())

    # -- checking (the server) ---------------------------------------------------------------------------

    def authenticate(self, key: str) -> KeyRecord | None:
        """The active record this key belongs to, or ``None`` (unknown, wrong, revoked or expired)."""
        match = _KEY.fullmatch(key.strip())
        if not match:
            return None
        fingerprint = hashlib.sha256(key.strip().encode()).hexdigest()
        with self._mutex:
            self._refresh()
            record = self._records.get(match.group(1))
            if record is None or not record.is_active:
                return None
            if self._verified.get(fingerprint) != record.id:
                if not record.matches(match.group(2)):
                    return None
                self._verified[fingerprint] = record.id
            self._used[record.id] = _now()
        self._flush_last_used()
        return record

    def _flush_last_used(self, force: bool = False) -> None:
        if not force and _now() - self._last_flush < LAST_USED_FLUSH_SECONDS:
            return
        with self._mutex:
            used, self._used = self._used, {}
            self._last_flush = _now()
        if not used:
            return
        try:
            with self._locked():
                records = self._read()
                for key_id, moment in used.items():
                    if key_id in records:
                        records[key_id].last_used_at = max(moment, records[key_id].last_used_at or 0)
                self._write(records)
        except (OSError, StoreError):
            pass  # last-used times are a courtesy; never fail a request over them

    def close(self) -> None:
        self._flush_last_used(force=True)

