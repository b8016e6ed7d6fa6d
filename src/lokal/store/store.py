"""The model store: names → manifests → blobs, in Ollama's directory layout.

::

    <root>/blobs/sha256-<hex>                           content-addressed files (BlobStore)
    <root>/manifests/<host>/<namespace>/<model>/<tag>   one manifest per name
    <root>/kvcache/sha256-<hex>[-…]/                     prompt caches on disk (engine/kv_files.py), by weights

Pointing ``Store`` at ``~/.ollama/models`` lists and resolves the models Ollama pulled. A manifest is
written last and atomically, so a name never points at half a model; removing a name garbage-collects
the blobs no other manifest references, and the prompt caches computed with them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from lokal.errors import InvalidModelName, LokalError, ModelNotFound, StoreError
from lokal.security.encryption import Cipher
from lokal.store.blobs import BlobStore, fsync_directory
from lokal.store.manifests import Layer, Manifest, media_type_of
from lokal.store.names import ModelName
from lokal.store.stored_model import Adapter, StoredModel

logger = logging.getLogger(__name__)

_BLOB_NAME = re.compile(r"sha256-([0-9a-f]{64})")


@dataclass
class ModelEntry:
    name: ModelName
    manifest: Manifest
    digest: str  # sha256 of the manifest file's bytes: Ollama's model ID
    size: int  # bytes of all blobs the manifest names, as `ollama list` shows
    modified_at: datetime
    path: Path  # the manifest file

    @property
    def id(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]


@dataclass
class ListResult:
    models: list[ModelEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # manifests that could not be read, one line each


def _as_typed(name: str | ModelName) -> str:
    """The name as the user wrote it, for messages (Ollama says "x", not "x:latest")."""
    return name.strip() if isinstance(name, str) else name.display


def _as_name(name: str | ModelName) -> ModelName:
    return name if isinstance(name, ModelName) else ModelName.parse(name)


def _writable_name(name: str | ModelName) -> ModelName:
    parsed = _as_name(name)
    if parsed.digest:
        raise InvalidModelName(f"cannot store a model under {parsed.display!r}: the digest is decided by "
                               f"the content, leave it out")
    return parsed


class Store:
    def __init__(self, root: Path | str, cipher: Cipher | None = None):
        self.root = Path(root).expanduser()
        self.blobs = BlobStore(self.root / "blobs", cipher)
        self.manifests_dir = self.root / "manifests"
        self.kvcache_dir = self.root / "kvcache"  # one folder per weights (+ adapters) and KV type

    def prompt_cache_dir(self, blobs: list[str], kv_layout: str) -> Path:
        """Where a model's idle KV is written and read back (engine/kv_files.py): named by the blobs the KV
        depends on (the weights first, then each adapter with its scale) and the KV layout (element type,
        V transposed or not), so a cache is only ever read into the model and layout that computed it, and
        goes when those blobs go."""
        return self.kvcache_dir / "-".join([*blobs, kv_layout])

    @classmethod
    def from_settings(cls, settings: Any) -> Store:
        """The store at LOKAL_MODELS, encrypting new blobs when an encryption key is configured."""
        return cls(settings.models, Cipher.from_settings(settings))

    # -- reading ---------------------------------------------------------------------------------------

    def list(self) -> ListResult:
        """Every readable model, newest first; unreadable manifests are reported in ``errors``."""
        result = ListResult()
        for path in self._manifest_files():
            relative = path.relative_to(self.manifests_dir).as_posix()
            try:
                name = ModelName(*path.relative_to(self.manifests_dir).parts)
                result.models.append(self._read_entry(name, path))
            except (LokalError, OSError) as exc:
                message = exc.message if isinstance(exc, LokalError) else str(exc)
                result.errors.append(f"manifests/{relative}: {message}")
        result.models.sort(key=lambda entry: (-entry.modified_at.timestamp(), entry.name.display.lower()))
        return result

    def _manifest_files(self) -> Iterator[Path]:
        """Files exactly four levels under ``manifests/``, skipping our own hidden temp files."""
        def walk(directory: Path, depth: int) -> Iterator[Path]:
            try:
                entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
            except (FileNotFoundError, NotADirectoryError):
                return
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if depth == 4 and entry.is_file():
                    yield Path(entry.path)
                elif depth < 4 and entry.is_dir():
                    yield from walk(Path(entry.path), depth + 1)
        return walk(self.manifests_dir, 1)

    def _read_entry(self, name: ModelName, path: Path) -> ModelEntry:
        raw = path.read_bytes()
        manifest = Manifest.from_json(raw)
        modified_at = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
        return ModelEntry(name=name, manifest=manifest, digest="sha256:" + hashlib.sha256(raw).hexdigest(),
                          size=manifest.total_size, modified_at=modified_at, path=path)

    def _find_manifest(self, name: ModelName) -> Path | None:
        """The manifest file for ``name``, matching each directory level case-insensitively."""
        path = self.manifests_dir
        for part in name.manifest_parts:
            if (path / part).exists():
                path = path / part
                continue
            try:
                path = next(child for child in path.iterdir() if child.name.lower() == part.lower())
            except (StopIteration, FileNotFoundError, NotADirectoryError):
                return None
        return path if path.is_file() else None

    def get(self, name: str | ModelName) -> ModelEntry:
        """The model called ``name``; ``name@sha256:…`` must also match the manifest digest."""
        wanted = _as_name(name)
        path = self._find_manifest(wanted)
        if path is None:
            raise ModelNotFound(_as_typed(name))
        # The spelling on disk is the one the model was stored under.
        stored_name = ModelName(*path.relative_to(self.manifests_dir).parts)
        try:
            entry = self._read_entry(stored_name, path)
        except OSError as exc:
            raise StoreError(f"could not read the manifest of {wanted.display}: {exc}") from None
        except StoreError as exc:
            raise StoreError(f"{wanted.display}: {exc.message}") from None
        if wanted.digest and wanted.digest != entry.digest:
            raise ModelNotFound(wanted.display, f'model "{wanted.without_digest().display}" is at '
                                                f'{entry.digest}, not {wanted.digest}')
        return entry

    def open(self, name: str | ModelName) -> StoredModel:
        """The model called ``name`` with its weights checked present and every small layer read."""
        from lokal.store.gguf_info import read_details

        from lokal.store import onnx_layout

        entry = self.get(name)
        if onnx_layout.is_onnx(entry):  # a folder of files: GenAI opens it, linked from the blobs
            path, details, model_format = onnx_layout.materialize(self, entry), onnx_layout.read_details(self, entry), "onnx"
        else:
            path, model_format = self.model_path(entry), "gguf"
            details = read_details(path)  # cached per file, so a request pays for the header once
        return StoredModel(format=model_format,
            entry=entry, path=path, details=details, params=self.params(entry),
            system=self.layer_text(entry, "system"), template=self.layer_text(entry, "template"),
            license=self.layer_text(entry, "license") or details.license,
            messages=tuple(self.messages(entry)),
            adapters=tuple(Adapter(self._layer_path(entry, layer)) for layer in entry.manifest.layers_of(
                media_type_of("adapter"))),
            knowledge=tuple(self._layer_path(entry, layer) for layer in entry.manifest.layers_of(
                media_type_of("knowledge"))),
            draft=next((self._layer_path(entry, layer) for layer in entry.manifest.layers_of(
                media_type_of("draft"))), None),
        )

    def exists(self, name: str | ModelName) -> bool:
        try:
            self.get(name)
        except ModelNotFound:
            return False
        except StoreError:
            return _as_name(name).digest is None  # there, though unreadable
        return True

    # -- writing ---------------------------------------------------------------------------------------

    def _gc_lock_fd(self) -> int:
        lock_dir = self.blobs.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return os.open(lock_dir / "gc.lock", os.O_RDWR | os.O_CREAT, 0o644)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold while adding blobs that a manifest written at the end will reference (a pull, a create):
        garbage collection in any process is skipped meanwhile, so it cannot take those blobs away."""
        fd = self._gc_lock_fd()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def write_manifest(self, name: str | ModelName, manifest: Manifest) -> ModelEntry:
        """Point ``name`` at ``manifest``: the last step of every pull, create and copy.

        Every blob the manifest names must already be stored with its size; the file appears atomically."""
        target = _writable_name(name)
        with self.writing():
            for layer in (manifest.config, *manifest.layers):
                self._check_blob(target, layer)
            return self._write_manifest_bytes(target, manifest.to_json())

    def _check_blob(self, name: ModelName, layer: Layer) -> None:
        try:
            size = self.blobs.size(layer.digest)
        except StoreError:
            raise StoreError(f"cannot write the manifest of {name.display}: blob {layer.digest} "
                             f"({layer.media_type}) is not in the store") from None
        if size != layer.size:
            raise StoreError(f"cannot write the manifest of {name.display}: blob {layer.digest} has "
                             f"{size} bytes, the manifest says {layer.size}")

    def _write_manifest_bytes(self, name: ModelName, raw: bytes) -> ModelEntry:
        # Reuse the spelling already on disk so "SmolLM2" and "smollm2" never become two entries.
        path = self._find_manifest(name) or self._manifest_path_for(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            with open(temp, "wb") as file:
                file.write(raw)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_directory(path.parent)
        return self._read_entry(ModelName(*path.relative_to(self.manifests_dir).parts), path)

    def _manifest_path_for(self, name: ModelName) -> Path:
        """Where a new manifest goes: existing directories keep their spelling, new ones take the name's."""
        path = self.manifests_dir
        for part in name.manifest_parts[:-1]:
            existing = None
            if path.is_dir() and not (path / part).exists():
                existing = next((child for child in path.iterdir() if child.name.lower() == part.lower()), None)
            path = existing or path / part
        return path / name.tag

    def copy(self, source: str | ModelName, destination: str | ModelName) -> ModelEntry:
        """A second name for the same model: a new manifest sharing the blobs (same bytes, same ID)."""
        target = _writable_name(destination)
        entry = self.get(source)
        with self.writing():
            return self._write_manifest_bytes(target, entry.path.read_bytes())

    def remove(self, name: str | ModelName) -> None:
        """Delete the name, then the blobs no remaining manifest references."""
        wanted = _as_name(name)
        if wanted.digest:
            self.get(wanted)  # refuse to remove a name that moved on to another digest
        path = self._find_manifest(wanted)
        if path is None:
            raise ModelNotFound(_as_typed(name))
        path.unlink()
        directory = path.parent
        while directory != self.manifests_dir:
            try:
                directory.rmdir()
            except OSError:
                break  # not empty: other tags or models live here
            directory = directory.parent
        self.gc()

    def gc(self) -> list[str]:
        """Remove blobs no manifest references; returns their digests.

        Skipped (returns ``[]``) while a pull or create holds ``writing()``, and while any manifest is
        unreadable: its references are unknown, and deleting blobs it may need cannot be undone."""
        fd = self._gc_lock_fd()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("skipping blob garbage collection: a pull or create is in progress")
                return []
            listing = self.list()
            if listing.errors:
                logger.warning("skipping blob garbage collection: unreadable manifests: %s",
                               "; ".join(listing.errors))
                return []
            referenced: set[str] = set()
            for entry in listing.models:
                referenced |= entry.manifest.digests
            removed = self.blobs.gc(referenced)
            self._remove_orphan_prompt_caches(referenced)
            return removed
        finally:
            os.close(fd)

    def _remove_orphan_prompt_caches(self, referenced: set[str]) -> None:
        """Drop the prompt caches (``kvcache/``) computed with blobs no manifest references any more: the
        weights they were computed with are gone, so nothing can ever read them again."""
        kept = {digest.removeprefix("sha256:") for digest in referenced}
        try:
            folders = list(self.kvcache_dir.iterdir())
        except OSError:
            return  # no cache yet
        for folder in folders:
            digests = _BLOB_NAME.findall(folder.name)
            if digests and not kept.issuperset(digests):
                shutil.rmtree(folder, ignore_errors=True)
                logger.info("removed the prompt cache %s: its model was deleted", folder.name)

    # -- layers ----------------------------------------------------------------------------------------

    def model_path(self, entry: ModelEntry) -> Path:
        """The GGUF file of the model layer, checked to be present with the manifest's size."""
        layer = entry.manifest.layer("model")
        if layer is None:
            raise StoreError(f"model {entry.name.display} has no weights layer")
        try:
            size = self.blobs.size(layer.digest)
        except StoreError:
            raise StoreError(f"the weights of {entry.name.display} (blob {layer.digest}) are missing "
                             f"from the store; pull the model again") from None
        if size != layer.size:
            raise StoreError(f"the weights of {entry.name.display} are incomplete or corrupt: blob "
                             f"{layer.digest} has {size} bytes, the manifest says {layer.size}; "
                             f"pull the model again")
        return self.blobs.plain_path(layer.digest)

    def _layer_path(self, entry: ModelEntry, layer: Layer) -> Path:
        path = self.blobs.path(layer.digest)
        if not path.is_file():
            raise StoreError(f"the {layer.kind or layer.media_type} of {entry.name.display} (blob "
                             f"{layer.digest}) is missing from the store")
        return self.blobs.plain_path(layer.digest)

    def _read_layer(self, entry: ModelEntry, layer: Layer) -> str:
        try:
            return self.blobs.read_bytes(layer.digest).decode("utf-8")
        except FileNotFoundError:
            raise StoreError(f"the {layer.kind or layer.media_type} of {entry.name.display} (blob "
                             f"{layer.digest}) is missing from the store") from None
        except UnicodeDecodeError:
            raise StoreError(f"the {layer.kind or layer.media_type} of {entry.name.display} (blob "
                             f"{layer.digest}) is not UTF-8 text") from None

    def layer_text(self, entry: ModelEntry, kind: str) -> str | None:
        """Text of a layer (template, system, license, …); several license layers are joined."""
        media_type = media_type_of(kind)
        layers = entry.manifest.layers_of(media_type)
        if not layers:
            return None
        if media_type == media_type_of("license"):
            return "\n".join(self._read_layer(entry, layer) for layer in layers)
        return self._read_layer(entry, layers[-1])

    def _layer_json(self, entry: ModelEntry, kind: str) -> Any:
        text = self.layer_text(entry, kind)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise StoreError(f"the {kind} layer of {entry.name.display} is not valid JSON: {exc}") from None

    def params(self, entry: ModelEntry) -> dict[str, Any]:
        """The Modelfile PARAMETERs, e.g. ``{"stop": ["<|im_end|>"], "temperature": 0.7}``."""
        data = self._layer_json(entry, "params")
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise StoreError(f"the params layer of {entry.name.display} is not a JSON object")
        return data

    def messages(self, entry: ModelEntry) -> list[dict[str, Any]]:
        """The Modelfile MESSAGEs: ``[{"role": "user", "content": "…"}, …]``."""
        data = self._layer_json(entry, "messages")
        if data is None:
            return []
        if not isinstance(data, list) or not all(isinstance(message, dict) for message in data):
            raise StoreError(f"the messages layer of {entry.name.display} is not a JSON list of objects")
        return data
