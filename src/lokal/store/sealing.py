"""Passphrase encryption of a bundle file (``lokal export --encrypt``): AES-256-GCM in 1 MiB chunks, so a
bundle of any size streams, with the key derived by scrypt from the passphrase.

Layout: ``MAGIC``, 16 bytes of salt, a 7-byte nonce prefix, then chunks, each a 4-byte big-endian length and
the sealed chunk (ciphertext + 16-byte tag). A chunk's nonce is the prefix, its 4-byte index and a byte that
is 1 on the last chunk only, so reordered, dropped or truncated chunks fail to open as surely as changed
bytes or a wrong passphrase do.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"LOKAL-SEALED-1\n"
CHUNK = 1 << 20
TAG = 16
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1


class SealError(Exception):
    """Wrong passphrase, or a damaged or truncated sealed file."""


def is_sealed(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def seal_file(source: Path, destination: Path, passphrase: str) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, prefix = os.urandom(16), os.urandom(7)
    aead = AESGCM(_key(passphrase, salt))
    with open(source, "rb") as reader, open(destination, "wb") as writer:
        writer.write(MAGIC + salt + prefix)
        index = 0
        chunk = reader.read(CHUNK)
        while True:
            following = reader.read(CHUNK)
            is_last = not following
            sealed = aead.encrypt(_nonce(prefix, index, is_last), chunk, None)
            writer.write(struct.pack(">I", len(sealed)) + sealed)
            if is_last:
                break
            chunk, index = following, index + 1
        writer.flush()
        os.fsync(writer.fileno())


def unseal_file(source: Path, destination: Path, passphrase: str) -> None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    with open(source, "rb") as reader, open(destination, "wb") as writer:
        if reader.read(len(MAGIC)) != MAGIC:
            raise SealError("not a sealed lokal file")
        salt, prefix = _exactly(reader, 16), _exactly(reader, 7)
        aead = AESGCM(_key(passphrase, salt))
        index = 0
        while True:
            header = reader.read(4)
            if len(header) < 4:
                raise SealError("the file is truncated")
            (size,) = struct.unpack(">I", header)
            if not TAG <= size <= CHUNK + TAG:
                raise SealError("the file is damaged")
            sealed = _exactly(reader, size)
            is_last = reader.peek(1)[:1] == b""  # type: ignore[attr-defined]  (a BufferedReader)
            try:
                writer.write(aead.decrypt(_nonce(prefix, index, is_last), sealed, None))
            except InvalidTag:
                raise SealError("wrong passphrase, or the file is damaged") from None
            if is_last:
                return
            index += 1


def _key(passphrase: str, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    if not passphrase:
        raise SealError("the passphrase is empty")
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase.encode())


def _nonce(prefix: bytes, index: int, is_last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if is_last else 0)


def _exactly(reader: BinaryIO, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise SealError("the file is truncated")
    return data
