"""``lokal encrypt --all`` / ``lokal decrypt --all``: convert a store's blobs in place, crash-safe and resumable.

Each blob is converted on its own: the new form is written to ``sha256-<hex>-sealing`` (or ``-unsealing``),
fsynced, read back and checked against the blob's sha256, then renamed over the blob and the directory
fsynced. A kill at any moment leaves every blob either wholly in its old form or wholly in its new one, plus
at most one temp file, which the next run removes; the next run then skips blobs already converted, so it
resumes where the killed one stopped. Blobs are converted under their download lock, so a pull of the same
blob waits. A running server keeps serving: a model it has loaded holds the old file open.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterator

from lokal.errors import StoreError
from lokal.security.encryption import Cipher, decrypt_file, encrypt_file
from lokal.store.blobs import digest_hex, fsync_directory
from lokal.store.store import Store

_TEMP_SUFFIXES = ("-sealing", "-unsealing")


@dataclass
class Step:
    digest: str
    index: int  # 1-based
    total: int
    is_changed: bool  # False: it was already in the wanted form


def _hash_of_plaintext(store: Store, digest: str, path: os.PathLike) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        if store.blobs.cipher is not None and file.read(8) == b"LKENC001":
            file.seek(0)
            for chunk in store.blobs.cipher.decrypt_chunks(file, f"blob {digest}"):
                hasher.update(chunk)
        else:
            file.seek(0)
            while chunk := file.read(1 << 20):
                hasher.update(chunk)
    return hasher.hexdigest()


def migrate(store: Store, *, encrypt: bool) -> Iterator[Step]:
    """Encrypt (or decrypt) every blob; yields one step per blob as it is done."""
    cipher: Cipher | None = store.blobs.cipher
    if cipher is None:
        raise StoreError("no encryption key: set LOKAL_ENCRYPTION_KEY or LOKAL_ENCRYPTION_KEY_FILE "
                         "(make one with `lokal encrypt --all --new-key FILE`)")
    root = store.blobs.root
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.endswith(_TEMP_SUFFIXES):
                entry.unlink(missing_ok=True)  # left by a run that was killed; its blob is intact
    digests = sorted(store.blobs.all_digests())
    for index, digest in enumerate(digests, start=1):
        with store.blobs.lock(digest):
            path = store.blobs.path(digest)
            if not path.exists():  # removed meanwhile (lokal rm)
                yield Step(digest, index, len(digests), False)
                continue
            if store.blobs.is_encrypted(digest) == encrypt:
                yield Step(digest, index, len(digests), False)
                continue
            temp = path.with_name(path.name + ("-sealing" if encrypt else "-unsealing"))
            try:
                if encrypt:
                    encrypt_file(cipher, path, temp)
                else:
                    decrypt_file(cipher, path, temp, f"blob {digest}", mode=path.stat().st_mode & 0o777)
                if _hash_of_plaintext(store, digest, temp) != digest_hex(digest):
                    raise StoreError(f"blob {digest} does not match its digest; it was left as it is "
                                     f"(run `lokal verify` to see which model it belongs to)")
                os.replace(temp, path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            fsync_directory(root)
        yield Step(digest, index, len(digests), True)
