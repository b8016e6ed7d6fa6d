"""Blobs encrypted at rest: AES-256-GCM in chunks, so files of any size stream through a fixed buffer.

An encrypted blob keeps its name (``sha256-<hex>`` of the plaintext, so manifests, model IDs and digests stay
as Ollama computes them) and says what it is in its own header::

    LKENC001 | chunk size (u32) | reserved (u32) | salt (16 bytes)      32-byte header
    chunk 0 | chunk 1 | … | chunk n-1                                  each: ciphertext + 16-byte tag

Each file gets its own key, HKDF-SHA256(master key, salt); chunk ``i``'s nonce is ``i`` (11 bytes) plus a
last-chunk flag, and the header is authenticated with every chunk. Changing, reordering, dropping or
appending chunks, or a wrong master key, fails the tag check: ``DecryptionError``, never wrong bytes.

The master key comes from LOKAL_ENCRYPTION_KEY (64 hex digits) or LOKAL_ENCRYPTION_KEY_FILE.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from lokal.errors import ConfigError, DecryptionError

MAGIC = b"LKENC001"
HEADER = struct.Struct(">8sII16s")
HEADER_SIZE = HEADER.size  # 32
TAG_SIZE = 16
CHUNK_SIZE = 1 << 20
KEY_SIZE = 32


def is_encrypted_file(path: Path | str) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(MAGIC)) == MAGIC
    except (FileNotFoundError, IsADirectoryError):
        return False


def plaintext_size(file_size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Bytes of plaintext in an encrypted file of ``file_size`` bytes."""
    body = file_size - HEADER_SIZE
    num_chunks = max(1, -(-body // (chunk_size + TAG_SIZE)))
    return body - num_chunks * TAG_SIZE


def _nonce(index: int, is_last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if is_last else b"\x00")


class Cipher:
    """Encrypts and decrypts blob files with one master key."""

    def __init__(self, master_key: bytes):
        if len(master_key) != KEY_SIZE:
            raise ConfigError("the encryption key must be 32 bytes (64 hex digits)")
        self._master_key = master_key
        # Names the key without revealing it (decrypted copies are kept per key).
        self.key_id = hashlib.sha256(b"lokal key id" + master_key).hexdigest()[:16]

    @classmethod
    def from_settings(cls, settings: object) -> Cipher | None:
        key = getattr(settings, "encryption_key", None)
        key_file = getattr(settings, "encryption_key_file", None)
        if key is None and key_file is not None:
            key = read_key_file(Path(key_file))
        return cls(key) if key is not None else None

    def _file_key(self, salt: bytes) -> Any:
        # Imported here: every store opens this module, few stores are encrypted.
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=b"lokal blob v1")
        return AESGCM(hkdf.derive(self._master_key))

    def encrypt_stream(self, source: BinaryIO, target: BinaryIO, chunk_size: int = CHUNK_SIZE) -> None:
        salt = secrets.token_bytes(16)
        header = HEADER.pack(MAGIC, chunk_size, 0, salt)
        aead = self._file_key(salt)
        target.write(header)
        index = 0
        chunk = source.read(chunk_size)
        while True:
            following = source.read(chunk_size)
            is_last = not following
            target.write(aead.encrypt(_nonce(index, is_last), chunk, header))
            if is_last:
                return
            chunk, index = following, index + 1

    def decrypt_chunks(self, source: BinaryIO, what: str) -> Iterator[bytes]:
        """Plaintext chunks of an encrypted file; ``what`` names it in errors."""
        header = source.read(HEADER_SIZE)
        if len(header) != HEADER_SIZE:
            raise DecryptionError(f"{what} is not an encrypted blob (its header is cut short)")
        magic, chunk_size, _, salt = HEADER.unpack(header)
        if magic != MAGIC or not 0 < chunk_size <= 1 << 30:
            raise DecryptionError(f"{what} is not an encrypted blob")
        from cryptography.exceptions import InvalidTag

        aead = self._file_key(salt)
        index = 0
        sealed = source.read(chunk_size + TAG_SIZE)
        while True:
            following = source.read(chunk_size + TAG_SIZE)
            is_last = not following
            try:
                yield aead.decrypt(_nonce(index, is_last), sealed, header)
            except InvalidTag:
                raise DecryptionError(f"cannot decrypt {what}: wrong encryption key (LOKAL_ENCRYPTION_KEY), "
                                      f"or the file was damaged or tampered with") from None
            if is_last:
                return
            sealed, index = following, index + 1


def read_key_file(path: Path) -> bytes:
    try:
        text = path.expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the encryption key file {path}: {exc.strerror or exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_SIZE:
        raise ConfigError(f"the encryption key file {path} must hold 64 hex digits (a 32-byte key)")
    return key


def write_new_key_file(path: Path) -> bytes:
    """A fresh random key in a new 0600 file (never overwrites one)."""
    key = secrets.token_bytes(KEY_SIZE)
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; not overwriting a key (data encrypted with it would be lost)"
                          ) from None
    with os.fdopen(fd, "w") as file:
        file.write(key.hex() + "\n")
        file.flush()
        os.fsync(file.fileno())
    return key


# ---- files in the store --------------------------------------------------------------------------------------


def encrypt_file(cipher: Cipher, source: Path, target: Path) -> None:
    """``source`` (plaintext) → ``target`` (a temp name the caller renames into place), fsynced."""
    with open(source, "rb") as plain, open(target, "wb") as sealed:
        cipher.encrypt_stream(plain, sealed)
        sealed.flush()
        os.fsync(sealed.fileno())


def decrypt_file(cipher: Cipher, source: Path, target: Path, what: str, mode: int = 0o644) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(source, "rb") as sealed, os.fdopen(fd, "wb") as plain:
        for chunk in cipher.decrypt_chunks(sealed, what):
            plain.write(chunk)
        plain.flush()
        os.fsync(plain.fileno())


class DecryptedFiles:
    """Plaintext copies of encrypted blobs for readers that need a path (llama.cpp, the GGUF reader): one
    0600 file per blob in a private 0700 directory under TMPDIR (point TMPDIR at a tmpfs to keep plaintext
    off the disk), made when first needed, removed when the model that reads it is unloaded (``release``)
    and all of them when the process exits; directories left by a process that died are removed by the
    next one."""

    PREFIX = "lokal-decrypted-"

    def __init__(self) -> None:
        self._directory: Path | None = None
        self._paths: dict[str, Path] = {}

    def _dir(self) -> Path:
        if self._directory is None:
            import atexit
            import tempfile

            self._remove_stale(Path(tempfile.gettempdir()))
            self._directory = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-"))
            os.chmod(self._directory, 0o700)
            atexit.register(self.remove_all)
        return self._directory

    def _remove_stale(self, root: Path) -> None:
        import shutil

        for entry in root.glob(self.PREFIX + "*"):
            pid_text = entry.name[len(self.PREFIX):].split("-", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue
            try:
                os.kill(int(pid_text), 0)
            except ProcessLookupError:
                shutil.rmtree(entry, ignore_errors=True)
            except PermissionError:
                pass  # another user's live process

    def path_for(self, cipher: Cipher, blob: Path, what: str) -> Path:
        stat = blob.stat()
        key = f"{blob.name}-{stat.st_size}-{stat.st_mtime_ns}-{cipher.key_id}"
        cached = self._paths.get(key)
        if cached is not None and cached.exists():
            return cached
        target = self._dir() / f"{blob.name}-{cipher.key_id}"
        temp = target.with_name(target.name + ".tmp")
        try:
            decrypt_file(cipher, blob, temp, what, mode=0o600)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        os.replace(temp, target)
        self._paths[key] = target
        return target

    def release(self, path: Path) -> None:
        """Remove one plaintext copy once the model reading it is unloaded. An engine still mapping the file
        keeps its pages (the inode lives until unmapped); a later reader decrypts afresh."""
        if self._directory is None or path.parent != self._directory:
            return  # not a decrypted copy: a plain store's blob
        path.unlink(missing_ok=True)
        self._paths = {key: kept for key, kept in self._paths.items() if kept != path}

    def remove_all(self) -> None:
        import shutil

        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
            self._paths.clear()


DECRYPTED = DecryptedFiles()
