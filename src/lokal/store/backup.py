"""``lokal backup DIR`` and ``lokal restore DIR``: the whole store (models, and the API keys and audit log
that live under it by default), key and audit files kept elsewhere, and the settings in force.

A backup is a directory: ``store/`` (a copy of LOKAL_MODELS, in-progress temp files left out),
``files/`` (key and audit files configured outside the store) and ``backup.json``, written last, with the
sha256 and size of every file and the non-default settings. Garbage collection is held off while copying,
so no blob a manifest names disappears midway.

Restore verifies every file first and refuses a damaged or incomplete backup with nothing changed. It
refuses while a server answers at LOKAL_HOST (a live server's loaded models and open files would not follow
the swap). It copies the backup into a new directory beside the store and then swaps it in with renames;
the previous store is kept beside it (``<store>.replaced-<time>``) until the operator removes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from lokal.errors import BadRequest, ConfigError
from lokal.store.blobs import file_sha256_hex, fsync_directory
from lokal.store.store import Store

FORMAT = "lokal-backup"
VERSION = 1
INDEX_NAME = "backup.json"
CHUNK = 1 << 20
# Settings naming files outside the store that a backup carries (engineer 11's keys and audit log).
FILE_SETTINGS = ("LOKAL_KEYS_FILE", "LOKAL_AUDIT_LOG")

Progress = Callable[[str], None]


class InvalidBackup(BadRequest):
    """A backup directory that is damaged, incomplete or not a lokal backup."""


@dataclass
class RestoreResult:
    num_files: int
    replaced: Path | None  # where the previous store was moved, if there was one
    settings: dict[str, str]  # the backup's non-default settings, for the operator to apply


def backup(settings: Any, target: Path, progress: Progress = lambda _: None) -> int:
    """Copy the store, outside key/audit files and settings into ``target`` (new or empty). Returns files."""
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} exists and is not an empty directory; back up into a new one")
    store = Store(settings.models)
    files: dict[str, dict[str, Any]] = {}
    outside: dict[str, str] = {}
    target.mkdir(parents=True, exist_ok=True)
    with store.writing():
        for path in _store_files(store.root):
            relative = "store/" + path.relative_to(store.root).as_posix()
            progress(f"copying {relative}")
            files[relative] = _copy(path, target / relative)
        for name in FILE_SETTINGS:
            configured = _configured_path(settings, name)
            if configured is None or not configured.is_file() or _is_inside(configured, store.root):
                continue
            relative = f"files/{name}/{configured.name}"
            files[relative] = _copy(configured, target / relative)
            outside[relative] = str(configured)
    index = {"format": FORMAT, "version": VERSION, "created": datetime.now(timezone.utc).isoformat(),
             "store": str(store.root), "files": files, "outside_files": outside,
             "settings": _non_default_settings(settings)}
    _write_atomically(target / INDEX_NAME, json.dumps(index, indent=2).encode())
    return len(files)


def verify_backup(source: Path, progress: Progress = lambda _: None) -> dict[str, Any]:
    """The backup's index once every file it lists is present with its size and checksum."""
    source = Path(source)
    try:
        index = json.loads((source / INDEX_NAME).read_bytes())
    except FileNotFoundError:
        raise InvalidBackup(f"{source} is not a complete lokal backup: {INDEX_NAME} is missing") from None
    except (OSError, ValueError) as exc:
        raise InvalidBackup(f"{source}/{INDEX_NAME} is unreadable: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("files"), dict):
        raise InvalidBackup(f"{source} is not a lokal backup")
    if index.get("version") != VERSION:
        raise InvalidBackup(f"{source}: backup version {index.get('version')} (this lokal reads {VERSION})")
    for relative, spec in index["files"].items():
        parts = PurePosixPath(relative).parts
        if ".." in parts or parts[0] not in ("store", "files") or PurePosixPath(relative).is_absolute():
            raise InvalidBackup(f"{source}: bad file name {relative!r} in {INDEX_NAME}")
        path = source / relative
        progress(f"verifying {relative}")
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise InvalidBackup(f"{source} is incomplete: {relative} is missing") from None
        if size != spec.get("size"):
            raise InvalidBackup(f"{source}: {relative} has {size} bytes, the backup says {spec.get('size')}")
        if file_sha256_hex(path) != spec.get("sha256"):
            raise InvalidBackup(f"{source}: {relative} is damaged (its checksum differs)")
    return index


def restore(settings: Any, source: Path, progress: Progress = lambda _: None,
            is_server_running: Callable[[], bool] | None = None) -> RestoreResult:
    """Replace the store (and outside key/audit files) with the backup at ``source``."""
    index = verify_backup(source, progress)
    running = is_server_running or (lambda: server_answers(settings))
    if running():
        raise ConfigError(f"a lokal server is running at {settings.base_url}; stop it before restoring "
                          f"(a live server would keep serving the old store)")
    store_root = Path(settings.models).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    staging = store_root.with_name(f".{store_root.name}.restoring-{stamp}")
    store_files = {rel: spec for rel, spec in index["files"].items() if rel.startswith("store/")}
    try:
        staging.mkdir(parents=True)
        for relative, spec in store_files.items():
            progress(f"restoring {relative}")
            copied = _copy(Path(source) / relative, staging / relative.removeprefix("store/"))
            if copied["sha256"] != spec["sha256"]:
                raise InvalidBackup(f"{source}: {relative} changed while it was being restored")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replaced = None
    if store_root.exists():
        replaced = store_root.with_name(f"{store_root.name}.replaced-{stamp}")
        os.replace(store_root, replaced)
    os.replace(staging, store_root)
    fsync_directory(store_root.parent)
    for relative, original in (index.get("outside_files") or {}).items():
        destination = Path(original)
        destination.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(destination, (Path(source) / relative).read_bytes(), mode=0o600)
    return RestoreResult(num_files=len(index["files"]), replaced=replaced, settings=dict(index.get("settings") or {}))


def server_answers(settings: Any) -> bool:
    import httpx

    try:
        return httpx.get(settings.base_url + "/api/version", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


# ---- helpers ------------------------------------------------------------------------------------------


def _store_files(root: Path) -> list[Path]:
    """Every file of the store but the transient ones: partial blobs, locks, our hidden temp files."""
    if not root.is_dir():
        return []
    result = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d != ".locks")
        for name in sorted(names):
            if name.startswith(".") or name.endswith("-partial"):
                continue
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                result.append(path)
    return result


def _copy(source: Path, destination: Path) -> dict[str, Any]:
    """Copy with hashing, fsynced; returns the copy's sha256 and size."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    size = 0
    with open(source, "rb") as reader, open(destination, "wb") as writer:
        while chunk := reader.read(CHUNK):
            hasher.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    shutil.copymode(source, destination)
    return {"sha256": hasher.hexdigest(), "size": size}


def _write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)


def _configured_path(settings: Any, name: str) -> Path | None:
    try:
        value = getattr(settings, name.removeprefix("LOKAL_").lower())
    except AttributeError:
        return None  # a setting this version does not have
    return Path(value).expanduser() if value else None


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _non_default_settings(settings: Any) -> dict[str, str]:
    rows = settings.rows() if hasattr(settings, "rows") else []
    # Secrets (LOKAL_API_KEY, LOKAL_ENCRYPTION_KEY) stay out of the backup's index.
    return {name: value for name, value, source, _ in rows if source != "default" and not name.endswith("_KEY")}
