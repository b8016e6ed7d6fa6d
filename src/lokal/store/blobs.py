"""Content-addressed blob storage in Ollama's on-disk form: ``<root>/sha256-<hex>``.

A blob becomes visible only when complete: bytes go to a ``-partial`` file, are hashed while streaming,
fsynced and renamed to the final name. A partial for a known digest survives a crash and is resumed by
the next writer; a partial for an unknown digest (URL or file import) is thrown away.

With a ``cipher`` (LOKAL_ENCRYPTION_KEY) a blob is encrypted when it is committed, and every read below
(``size``, ``verify``, ``read_bytes``, ``plain_path``) sees plaintext whichever form a blob is stored in;
see ``lokal.security.encryption``. Partial downloads stay plaintext until committed, so they can resume.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Iterator

from lokal.errors import DecryptionError, DigestMismatch, DiskFull, InvalidDigest, StoreError
from lokal.security import encryption
from lokal.security.encryption import Cipher

CHUNK_SIZE = 1 << 20
# Errors that mean "no room for these bytes": a full disk, a quota, or a file size limit.
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# A partial nobody holds open and nobody touched for this long is abandoned.
STALE_PARTIAL_SECONDS = 24 * 3600

_DIGEST = re.compile(r"sha256[:\-]([0-9a-fA-F]{64})")
_BLOB_FILE = re.compile(r"sha256-([0-9a-f]{64})")
_LOCK_KEY = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")


def digest_hex(digest: str) -> str:
    """The lower-case hex of ``sha256:<hex>`` (``sha256-<hex>`` is accepted too)."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if not match:
        raise InvalidDigest(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return match.group(1).lower()


def normalize_digest(digest: str) -> str:
    return "sha256:" + digest_hex(digest)


def file_sha256_hex(path: Path) -> str:
    """The lower-case sha256 hex of a file's bytes as they lie on disk, read in chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_no_space(exc: OSError) -> bool:
    return exc.errno in _NO_SPACE_ERRNOS


class BlobWriter:
    """Streams one blob into the store; use as a context manager from ``BlobStore.writer``.

    ``offset`` is how many bytes a previous, interrupted writer already stored (resume from there).
    """

    def __init__(self, store: BlobStore, digest: str | None):
        self._store = store
        self.expected_digest = normalize_digest(digest) if digest is not None else None
        if self.expected_digest:
            self.temp_path = store.root / f"sha256-{digest_hex(self.expected_digest)}-partial"
        else:
            self.temp_path = store.root / f"tmp-{secrets.token_hex(8)}-partial"
        self._hash = hashlib.sha256()
        self.offset = 0
        self.is_committed = False
        self._fd: int | None = None

    @property
    def is_resumable(self) -> bool:
        return self.expected_digest is not None

    def _open(self) -> None:
        self._store.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.temp_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # Two writers appending to one partial would interleave bytes; the second one is refused.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"blob {self.expected_digest} is being written by another process") from None
        self._fd = fd
        try:
            # Resume: hash what an interrupted writer left behind.
            with os.fdopen(os.dup(fd), "rb") as existing:
                existing.seek(0)
                while chunk := existing.read(CHUNK_SIZE):
                    self._hash.update(chunk)
                    self.offset += len(chunk)
        except OSError as exc:
            self._close()
            raise StoreError(f"could not read the partial blob {self.temp_path}: {exc}") from exc

    def __enter__(self) -> BlobWriter:
        self._open()
        return self

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._fd is None:
            raise StoreError("blob writer is not open (use it as a context manager)")
        view = memoryview(chunk)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._fail(exc)
        self._hash.update(chunk)
        self.offset += len(chunk)

    def _fail(self, exc: OSError) -> None:
        self._discard()
        if _is_no_space(exc):
            raise DiskFull(f"disk full while writing {self.expected_digest or 'a new blob'} "
                           f"to {self._store.root}: {exc.strerror}") from exc
        raise StoreError(f"could not write blob to {self._store.root}: {exc}") from exc

    def commit(self, expected_digest: str | None = None) -> str:
        """Check the digest, make the bytes durable and publish the blob; returns its digest.

        ``expected_digest`` checks a writer opened without one (a fresh, non-resumable temp file, as for an
        upload that a client re-sends from its start): a mismatch stores nothing."""
        if self._fd is None:
            raise StoreError("blob writer is not open (use it as a context manager)")
        actual = "sha256:" + self._hash.hexdigest()
        expected = self.expected_digest or (normalize_digest(expected_digest) if expected_digest else None)
        if expected and actual != expected:
            self._discard()
            raise DigestMismatch(expected, actual)
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._fail(exc)
        final = self._store.path(actual)
        if final.exists():
            self._discard()  # the same bytes are already stored (another pull or an identical import)
        else:
            if self._store.cipher is not None:
                self._store.seal(self.temp_path, final)
                self._discard()
            else:
                os.replace(self.temp_path, final)
                self._close()
            fsync_directory(self._store.root)
        self.is_committed = True
        return actual

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the flock
            self._fd = None

    def _discard(self) -> None:
        try:
            self.temp_path.unlink(missing_ok=True)
        finally:
            self._close()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.is_committed or self._fd is None:
            return
        if self.is_resumable:
            self._close()  # keep the partial: the next writer resumes from it
        else:
            self._discard()


class BlobStore:
    """The ``blobs`` directory of a model store."""

    def __init__(self, root: Path, cipher: Cipher | None = None):
        self.root = Path(root)
        self.cipher = cipher

    def path(self, digest: str) -> Path:
        """Where the blob is stored (encrypted or not); readers want ``plain_path`` or ``read_bytes``."""
        return self.root / f"sha256-{digest_hex(digest)}"

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        """The blob's size in plaintext bytes (what manifests record)."""
        try:
            stored = self.path(digest).stat().st_size
        except FileNotFoundError:
            raise StoreError(f"blob {normalize_digest(digest)} is not in the store") from None
        return encryption.plaintext_size(stored) if self.is_encrypted(digest) else stored

    # -- encryption at rest ----------------------------------------------------------------------------------

    def is_encrypted(self, digest: str) -> bool:
        return encryption.is_encrypted_file(self.path(digest))

    def _required_cipher(self, digest: str) -> Cipher:
        if self.cipher is None:
            raise DecryptionError(f"blob {normalize_digest(digest)} is encrypted: set LOKAL_ENCRYPTION_KEY or "
                                  f"LOKAL_ENCRYPTION_KEY_FILE to the key it was encrypted with")
        return self.cipher

    def plain_chunks(self, digest: str) -> Iterator[bytes]:
        path = self.path(digest)
        with open(path, "rb") as file:
            if file.read(len(encryption.MAGIC)) == encryption.MAGIC:
                file.seek(0)
                yield from self._required_cipher(digest).decrypt_chunks(file, f"blob {normalize_digest(digest)}")
                return
            file.seek(0)
            while chunk := file.read(CHUNK_SIZE):
                yield chunk

    def read_bytes(self, digest: str) -> bytes:
        """A (small) blob's plaintext."""
        return b"".join(self.plain_chunks(digest))

    def plain_path(self, digest: str) -> Path:
        """A path holding the blob's plaintext: the blob itself, or a private decrypted copy."""
        path = self.path(digest)
        if not self.is_encrypted(digest):
            return path
        return encryption.DECRYPTED.path_for(self._required_cipher(digest), path, f"blob {normalize_digest(digest)}")

    def seal(self, plain: Path, final: Path) -> None:
        """Encrypt ``plain`` into ``final`` atomically (temp file, fsync, rename); ``plain`` is left as is."""
        assert self.cipher is not None
        temp = final.with_name(final.name + "-sealing")
        try:
            encryption.encrypt_file(self.cipher, plain, temp)
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def writer(self, digest: str | None = None) -> BlobWriter:
        """A writer for a blob whose digest is known (resumable) or computed while streaming (``None``)."""
        return BlobWriter(self, digest)

    def add_bytes(self, data: bytes) -> str:
        with self.writer() as writer:
            writer.write(data)
            return writer.commit()

    def add_file(self, path: Path | str) -> str:
        """Copy a local file in, hashing while copying (the file is read once)."""
        with open(path, "rb") as source, self.writer() as writer:
            while chunk := source.read(CHUNK_SIZE):
                writer.write(chunk)
            return writer.commit()

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive lock across processes (and threads), e.g. ``lock(digest)`` around a download,
        so two pulls of one blob fetch it once: the second sees the blob exists when it gets the lock."""
        if not _LOCK_KEY.fullmatch(key):
            raise StoreError(f"invalid lock key {key!r}")
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        # Lock files are never deleted: removing one while another process waits on it breaks the lock.
        fd = os.open(lock_dir / f"{key.replace(':', '-')}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def verify(self, digest: str) -> bool:
        """Re-hash a stored blob's plaintext and compare it with its name."""
        hasher = hashlib.sha256()
        try:
            for chunk in self.plain_chunks(digest):
                hasher.update(chunk)
        except FileNotFoundError:
            return False
        return hasher.hexdigest() == digest_hex(digest)

    def all_digests(self) -> set[str]:
        """Digests of complete blobs; partial and temporary files never match."""
        if not self.root.is_dir():
            return set()
        return {"sha256:" + match.group(1) for entry in os.scandir(self.root)
                if (match := _BLOB_FILE.fullmatch(entry.name)) and entry.is_file()}

    def gc(self, referenced: set[str]) -> list[str]:
        """Remove complete blobs not in ``referenced`` and abandoned partials; returns the removed digests.

        A partial is removed only if no writer holds it and it is older than a day, so a running or
        paused pull never loses its progress. Callers must make sure no pull is between writing blobs
        and writing its manifest (``Store.gc`` does that)."""
        keep = {normalize_digest(digest) for digest in referenced}
        removed = []
        for digest in sorted(self.all_digests() - keep):
            self.path(digest).unlink(missing_ok=True)
            removed.append(digest)
        self._remove_stale_partials()
        return removed

    def _remove_stale_partials(self) -> None:
        if not self.root.is_dir():
            return
        cutoff = time.time() - STALE_PARTIAL_SECONDS
        for entry in os.scandir(self.root):
            if not entry.name.endswith("-partial") or not entry.is_file():
                continue
            try:
                if entry.stat().st_mtime > cutoff:
                    continue
                fd = os.open(entry.path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a writer holds it
            else:
                os.unlink(entry.path)
            finally:
                os.close(fd)
