"""The prompt cache on disk: idle slots' KV written when a model unloads, read back when it loads again.

So a chat continued after ``lokal serve`` restarts (or after keep_alive unloaded its model) pays only for
its new turn. One directory per model digest and KV layout (the runtime picks it under the store), one file
per cached prefix: a small header, the token ids whose KV it holds, then llama.cpp's sequence state. The
directory is bounded in bytes; the least recently written files go first. A file that is unreadable, for
another model or layout, or that llama.cpp refuses is simply skipped: the prompt is then computed. A state
written under another ``num_parallel`` is reframed for this one (``for_stream_count``).

Loading reads only each file's header and token ids: the KV itself (tens of MB for a long chat) stays on disk
until a prompt reuses it (``KvFile.read``), so a restart with a full cache costs no memory up front.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Sized

log = logging.getLogger("lokal.engine")

MAGIC = b"LKKV"
VERSION = 1
_HEADER = struct.Struct("<4sII")  # magic, version, number of tokens
_U32 = struct.Struct("<I")
_STATE_HEADER = struct.Struct("<Ii")  # llama.cpp's sequence state: its magic number, the saving sequence's id
SUFFIX = ".kv"


class KvFile:
    """One cached prefix's KV, still on disk: ``len()`` is its size, ``read()`` its bytes (None once the file
    is gone or changed: the prompt is then computed)."""

    def __init__(self, path: Path, offset: int, size: int):
        self.path, self.offset, self.size = path, offset, size

    def __len__(self) -> int:
        return self.size

    def read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read(self.size + 1)
        except OSError:
            return None
        return data if len(data) == self.size else None


def for_stream_count(state: bytes, num_streams: int) -> bytes:
    """llama.cpp's sequence state of a plain KV cache, as a context with ``num_streams`` KV streams reads it.

    After its header (a magic number and the saving sequence's id) the state gives the number of streams of
    the context that saved it (one per sequence: lokal's ``num_parallel``), then one block per stream: a cell
    count, zero for every stream but the sequence's own, whose cells follow. A context with another number of
    streams refuses it outright, so a cache written under one LOKAL_NUM_PARALLEL would never be read under
    another. The reader puts the cells in its own sequence's stream whatever block they come in, so the same
    cells are reframed: the count, the one block, then empty ones. Anything not laid out so is returned as it
    is, for llama.cpp to refuse. Only for a model whose memory is one plain KV cache (the runner checks): a
    sliding-window or recurrent model's state holds more sections after the first."""
    header = _STATE_HEADER.size
    if len(state) < header + _U32.size:
        return state
    (saved_streams,) = _U32.unpack_from(state, header)
    if saved_streams == num_streams or not 0 < saved_streams <= (len(state) - header) // _U32.size - 1:
        return state
    # Empty blocks (a zero count each) up to the filled one; its cells, then empty blocks, follow.
    first = header + _U32.size
    filled = next((i for i in range(saved_streams) if _U32.unpack_from(state, first + _U32.size * i)[0]), None)
    if filled is None:
        return state
    trailing = _U32.size * (saved_streams - filled - 1)
    if trailing and any(state[len(state) - trailing:]):
        return state
    block = state[first + _U32.size * filled:len(state) - trailing]
    return state[:header] + _U32.pack(num_streams) + block + bytes(_U32.size * (num_streams - 1))


@dataclass
class CachedPrefix:
    tokens: list[int]
    saved: KvFile


def save_prefixes(directory: Path, prefixes: Sequence[tuple[Sequence[int], Sized]], budget: int) -> int:
    """Write each (tokens, saved KV) as a file, then drop the oldest files past ``budget`` bytes.
    Returns how many files were written. Never raises for I/O trouble: a cache is not worth a failed unload."""
    if budget <= 0 or not prefixes:
        return 0
    written = 0
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for tokens, saved in prefixes:
            if not tokens or len(saved) > budget:
                continue
            token_bytes = struct.pack(f"<{len(tokens)}i", *tokens)
            name = hashlib.sha256(token_bytes).hexdigest()[:32] + SUFFIX
            if isinstance(saved, KvFile) and saved.path == directory / name:
                os.utime(saved.path)  # read from here and never used: already written, now the newest
                continue
            # Written straight from the saved buffer (up to the whole prompt_cache budget; no copy of it first).
            data = saved.read() if isinstance(saved, KvFile) else memoryview(saved)  # type: ignore[arg-type]
            if data is None:
                continue
            temporary = directory / (name + ".tmp")
            with open(temporary, "wb") as file:
                file.write(_HEADER.pack(MAGIC, VERSION, len(tokens)))
                file.write(token_bytes)
                file.write(data)
            os.replace(temporary, directory / name)  # a reader never sees half a file
            written += 1
        _bound(directory, budget)
    except OSError as exc:
        log.warning("could not write the prompt cache to %s: %s", directory, exc)
    return written


def load_prefixes(directory: Path, budget: int) -> list[CachedPrefix]:
    """The cached prefixes in ``directory``, most recently written first, within ``budget`` bytes."""
    if budget <= 0 or not directory.is_dir():
        return []
    result: list[CachedPrefix] = []
    total = 0
    for path in _by_age(directory, newest_first=True):
        try:
            with open(path, "rb") as file:
                magic, version, num_tokens = _HEADER.unpack(file.read(_HEADER.size))
                if magic != MAGIC or version != VERSION or num_tokens < 1:
                    continue
                tokens = list(struct.unpack(f"<{num_tokens}i", file.read(4 * num_tokens)))
                offset = file.tell()
                size = os.fstat(file.fileno()).st_size - offset
        except (OSError, struct.error):
            continue
        if size <= 0 or total + size > budget:
            continue
        total += size
        result.append(CachedPrefix(tokens, KvFile(path, offset, size)))
    return result


def _by_age(directory: Path, newest_first: bool) -> list[Path]:
    files = []
    for path in directory.glob("*" + SUFFIX):
        try:
            files.append((path.stat().st_mtime_ns, path))
        except OSError:
            continue
    return [path for _, path in sorted(files, key=lambda item: item[0], reverse=newest_first)]


def _bound(directory: Path, budget: int) -> None:
    files = _by_age(directory, newest_first=True)
    total = 0
    for path in files:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        total += size
        if total > budget:
            path.unlink(missing_ok=True)
