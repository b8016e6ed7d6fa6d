"""Opened models, reused while their files are unchanged.

Opening a model for a request reads its manifest and small layers and checks every blob (the load-time
integrity check): a millisecond or two of the event loop per request, the largest share of lokal's own
per-request work, paid again by every one of a burst of concurrent requests before the first token. A
model opened before is reused when its manifest and every blob it names still have the inode, size and
modification time they had then (one ``stat`` each); anything changed (a pull, ``create``, ``rm``, a blob
replaced or tampered with) sends the request through the full open and check again.

Encrypted stores are not cached: their models run from private plaintext copies that come and go with loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lokal.store.store import ModelEntry, Store
from lokal.store.stored_model import StoredModel

MAX_ENTRIES = 256  # names, not models: a client may spell one model several ways

FileSignature = tuple[int, int, int]  # inode, size, mtime in ns
Snapshot = tuple[tuple[Path, "FileSignature | None"], ...]


def _signature(path: Path) -> FileSignature | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


@dataclass(frozen=True)
class _Opened:
    stored: StoredModel
    files: Snapshot

    def is_current(self) -> bool:
        return all(_signature(path) == signature for path, signature in self.files)


class OpenedModels:
    def __init__(self, store: Store):
        self._store = store
        self._by_name: dict[str, _Opened] = {}

    def get(self, name: str) -> StoredModel | None:
        """The model ``name`` opened before, if nothing it is made of changed since."""
        opened = self._by_name.get(name)
        if opened is None:
            return None
        if not opened.is_current():
            del self._by_name[name]
            return None
        return opened.stored

    def snapshot(self, entry: ModelEntry) -> Snapshot:
        """The state of the files a model is made of. Take it before checking them: a change made during
        the check then shows as a difference, never as a checked state."""
        paths = [entry.path] + [self._store.blobs.path(layer.digest)
                                for layer in (entry.manifest.config, *entry.manifest.layers)]
        return tuple((path, _signature(path)) for path in paths)

    def remember(self, name: str, stored: StoredModel, files: Snapshot) -> None:
        """Note ``stored`` (checked) as what ``name`` opens to while ``files`` (its ``snapshot``) hold."""
        if self._store.blobs.cipher is not None:
            return
        if len(self._by_name) >= MAX_ENTRIES:
            self._by_name.clear()
        self._by_name[name] = _Opened(stored, files)
