"""Model integrity on load: the size of every blob always, the full sha256 of each blob that was not verified
since it last changed, and all of a model's blobs on demand (``lokal verify``).

Pulls verify digests while downloading; this catches what happens to the files afterwards (a disk error,
someone editing a blob). A successful full check leaves a marker, ``blobs/.verified/sha256-<hex>``, holding
the blob's size and modification time; the next load re-hashes only when those differ, so the first load
after a pull or create pays for one read of the weights and later loads cost two ``stat`` calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lokal.errors import IntegrityError, StoreError
from lokal.store.blobs import digest_hex


def _marker(store: Any, digest: str) -> Path:
    return store.blobs.root / ".verified" / f"sha256-{digest_hex(digest)}"


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size} {stat.st_mtime_ns}"


def is_marked_verified(store: Any, digest: str) -> bool:
    try:
        return _marker(store, digest).read_text() == _fingerprint(store.blobs.path(digest))
    except OSError:
        return False


def mark_verified(store: Any, digest: str) -> None:
    marker = _marker(store, digest)
    marker.parent.mkdir(parents=True, exist_ok=True)
    temp = marker.with_name(marker.name + ".tmp")
    temp.write_text(_fingerprint(store.blobs.path(digest)))
    os.replace(temp, marker)


def tampered_message(model: str, digest: str, kind: str) -> str:
    return (f'model "{model}" failed its integrity check: blob {digest} ({kind}) does not match its sha256 '
            f"digest (corrupted or tampered with); remove the model and pull it again")


def _kind(entry: Any, layer: Any) -> str:
    return layer.kind or ("config" if layer is entry.manifest.config else layer.media_type)


def check_for_load(store: Any, entry: Any) -> None:
    """Every blob of the model present with its manifest size, and each one hashed in full unless it was
    verified since it last changed; raises IntegrityError naming the model and the blob."""
    model = entry.name.display
    for layer in (entry.manifest.config, *entry.manifest.layers):
        try:
            size = store.blobs.size(layer.digest)
        except StoreError:
            raise StoreError(f'the {_kind(entry, layer)} of model "{model}" (blob {layer.digest}) is missing from '
                             f"the store; pull the model again") from None
        if size != layer.size:
            raise IntegrityError(f'model "{model}" failed its integrity check: blob {layer.digest} '
                                 f"({_kind(entry, layer)}) has {size} bytes, the manifest says {layer.size}; "
                                 f"remove the model and pull it again")
        if not is_marked_verified(store, layer.digest):
            if not store.blobs.verify(layer.digest):
                raise IntegrityError(tampered_message(model, layer.digest, _kind(entry, layer)))
            mark_verified(store, layer.digest)


@dataclass
class BlobProblem:
    digest: str
    kind: str
    problem: str


def verify_model(store: Any, entry: Any) -> list[BlobProblem]:
    """Every blob the model's manifest names: present, the right size, the right sha256."""
    problems = []
    for layer in (entry.manifest.config, *entry.manifest.layers):
        kind = _kind(entry, layer)
        try:
            size = store.blobs.size(layer.digest)  # in plaintext bytes, encrypted or not
        except StoreError:
            problems.append(BlobProblem(layer.digest, kind, "missing"))
            continue
        if size != layer.size:
            problems.append(BlobProblem(layer.digest, kind, f"{size} bytes, the manifest says {layer.size}"))
        elif not store.blobs.verify(layer.digest):
            problems.append(BlobProblem(layer.digest, kind, "sha256 does not match (corrupted or tampered with)"))
        else:
            try:
                mark_verified(store, layer.digest)
            except OSError as exc:
                raise StoreError(f"cannot record that blob {layer.digest} was verified: {exc}") from None
    return problems
