"""Model bundles: ``lokal export MODEL… -o bundle.tar`` and ``lokal import bundle.tar``.

A bundle is a plain tar: ``lokal-bundle.json`` first (format, the models, and the sha256 and size of every
other member), its own sha256 in ``lokal-bundle.json.sha256``, then each model's manifest under ``manifests/…`` (the store's own layout) and its blobs
under ``blobs/sha256-…``; ``--encrypt`` seals the whole file with a passphrase (sealing.py). Import reads the whole bundle once and checks every member's size and checksum,
that nothing is missing or extra, and that each manifest's blobs are in it, before it writes anything; a
damaged or truncated bundle is refused with the store untouched. Then it writes blobs through the store's
own verified writer and the manifests last, as a pull does.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from lokal.errors import BadRequest
from lokal.store.blobs import digest_hex, file_sha256_hex
from lokal.store.manifests import Manifest
from lokal.store.names import ModelName
from lokal.store.sealing import SealError, seal_file, unseal_file
from lokal.store.store import Store

INDEX_NAME = "lokal-bundle.json"
INDEX_CHECKSUM_NAME = "lokal-bundle.json.sha256"  # the index's own sha256, so no byte of it goes unchecked
FORMAT = "lokal-bundle"
VERSION = 1
CHUNK = 1 << 20


class InvalidBundle(BadRequest):
    """A bundle that is damaged, truncated or not a lokal bundle."""


@dataclass(frozen=True)
class BundleModel:
    name: str  # full name, as the store names it
    manifest: str  # member path of its manifest


def export_models(store: Store, names: Iterable[str], output: Path,
                  progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """Write the named models into a new bundle at ``output`` (written to a temp file, then renamed)."""
    entries = [store.get(name) for name in names]
    if not entries:
        raise BadRequest("name at least one model to export")
    members: dict[str, Path] = {}
    models = []
    for entry in entries:
        manifest_member = "manifests/" + "/".join(entry.name.manifest_parts)
        members[manifest_member] = entry.path
        models.append({"name": str(entry.name), "manifest": manifest_member})
        for layer in (entry.manifest.config, *entry.manifest.layers):
            members[f"blobs/sha256-{digest_hex(layer.digest)}"] = store.blobs.path(layer.digest)
    files = {}
    for member, path in members.items():
        progress(f"hashing {member}")
        files[member] = {"sha256": file_sha256_hex(path), "size": path.stat().st_size}
    index = json.dumps({"format": FORMAT, "version": VERSION, "models": models, "files": files},
                       indent=2).encode()
    temp = output.with_name(f".{output.name}.partial")
    try:
        with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, INDEX_NAME, index)
            _add_bytes(tar, INDEX_CHECKSUM_NAME, hashlib.sha256(index).hexdigest().encode() + b"\n")
            for member, path in members.items():
                progress(f"adding {member}")
                tar.add(path, arcname=member, recursive=False)
        temp.replace(output)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return [entry.name.display for entry in entries]


def export_sealed(store: Store, names: Iterable[str], output: Path, passphrase: str,
                  progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """``export_models``, encrypted with ``passphrase`` (sealing.py). The plain tar exists only in a private
    temp directory beside ``output`` while it is sealed."""
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".lokal-export-") as work:
        plain = Path(work) / "bundle.tar"
        exported = export_models(store, names, plain, progress)
        progress("encrypting")
        temp = Path(work) / "sealed"
        seal_file(plain, temp, passphrase)
        temp.replace(output)
    return exported


def import_sealed(store: Store, bundle: Path, passphrase: str,
                  progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """Decrypt into a private temp directory, then ``import_bundle`` (which verifies before writing)."""
    with tempfile.TemporaryDirectory(prefix="lokal-import-") as work:
        plain = Path(work) / "bundle.tar"
        try:
            unseal_file(bundle, plain, passphrase)
        except SealError as exc:
            raise InvalidBundle(f"{bundle}: {exc}") from None
        return import_bundle(store, plain, progress)


def import_bundle(store: Store, bundle: Path, progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """Verify the whole bundle, then add its models to the store. Returns the imported names."""
    index = verify_bundle(bundle, progress)
    with store.writing(), _open(bundle) as tar:
        for member in tar:
            if member.name.startswith("blobs/"):
                digest = "sha256:" + member.name.removeprefix("blobs/sha256-")
                if store.blobs.exists(digest) and store.blobs.size(digest) == member.size:
                    continue
                progress(f"importing {member.name}")
                source = tar.extractfile(member)
                assert source is not None  # verify_bundle checked it is a regular file
                with store.blobs.writer() as writer:  # a fresh temp file, checked against digest at commit
                    while chunk := source.read(CHUNK):
                        writer.write(chunk)
                    writer.commit(digest)
    imported = []
    with _open(bundle) as tar:
        manifests = {m.name: m for m in tar if m.name.startswith("manifests/")}
        for model in index:
            source = tar.extractfile(manifests[model.manifest])
            assert source is not None
            entry = store.write_manifest(ModelName.parse(model.name), Manifest.from_json(source.read()))
            imported.append(entry.name.display)
    return imported


def verify_bundle(bundle: Path, progress: Callable[[str], None] = lambda _: None) -> list[BundleModel]:
    """Read every member of ``bundle`` and check it against the index; InvalidBundle on any fault."""
    try:
        with _open(bundle) as tar:
            first = tar.next()
            if first is None or first.name != INDEX_NAME or not first.isfile():
                raise InvalidBundle(f"{bundle} is not a lokal bundle: it does not start with {INDEX_NAME}")
            second = tar.next()
            index = _read_index(tar, first, second, bundle)
            expected: dict[str, dict] = index["files"]
            seen: dict[str, bytes] = {}  # manifest members' bytes, to check their blobs below
            for member in tar:  # iterating starts over at the first member again
                if member is first or member is second:
                    continue
                spec = expected.get(member.name)
                if spec is None or member.name in seen or not member.isfile():
                    raise InvalidBundle(f"{bundle}: unexpected member {member.name!r}")
                if member.size != spec["size"]:
                    raise InvalidBundle(f"{bundle}: {member.name} has {member.size} bytes, the index says "
                                        f"{spec['size']}")
                progress(f"verifying {member.name}")
                digest, data = _hash_member(tar, member, keep=member.name.startswith("manifests/"))
                if digest != spec["sha256"]:
                    raise InvalidBundle(f"{bundle}: {member.name} is damaged (sha256 {digest[:12]}…, expected "
                                        f"{spec['sha256'][:12]}…)")
                if member.name.startswith("blobs/") and member.name != f"blobs/sha256-{digest}":
                    raise InvalidBundle(f"{bundle}: blob {member.name} does not hold the content its name says")
                seen[member.name] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise InvalidBundle(f"no such bundle: {bundle}") from None
        raise InvalidBundle(f"{bundle} is damaged or truncated: {exc}") from None
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise InvalidBundle(f"{bundle} is truncated or incomplete: {', '.join(missing[:3])} missing")
    models = [BundleModel(m["name"], m["manifest"]) for m in index["models"]]
    for model in models:
        if model.manifest not in seen:
            raise InvalidBundle(f"{bundle}: the manifest of {model.name} is not in the bundle")
        try:
            name = ModelName.parse(model.name)
            if model.manifest != "manifests/" + "/".join(name.manifest_parts):
                raise ValueError(f"it is filed under {model.manifest}")
            manifest = Manifest.from_json(seen[model.manifest])
        except Exception as exc:
            raise InvalidBundle(f"{bundle}: the manifest of {model.name} is invalid: {exc}") from None
        for layer in (manifest.config, *manifest.layers):
            member = f"blobs/sha256-{digest_hex(layer.digest)}"
            if member not in seen or expected[member]["size"] != layer.size:
                raise InvalidBundle(f"{bundle}: {model.name} needs blob {layer.digest}, which the bundle lacks")
    return models


def _read_index(tar: tarfile.TarFile, member: tarfile.TarInfo, checksum_member: tarfile.TarInfo | None,
                bundle: Path) -> dict:
    source = tar.extractfile(member)
    raw = source.read() if source else b""
    if checksum_member is None or checksum_member.name != INDEX_CHECKSUM_NAME:
        raise InvalidBundle(f"{bundle}: {INDEX_CHECKSUM_NAME} is missing")
    checksum = tar.extractfile(checksum_member)
    if checksum is None or checksum.read().strip() != hashlib.sha256(raw).hexdigest().encode():
        raise InvalidBundle(f"{bundle}: {INDEX_NAME} is damaged (its checksum differs)")
    try:
        index = json.loads(raw)
        if index.get("format") != FORMAT or not isinstance(index.get("files"), dict):
            raise ValueError("not a lokal bundle index")
        if index.get("version") != VERSION:
            raise ValueError(f"bundle version {index.get('version')} (this lokal reads {VERSION})")
        for name, spec in index["files"].items():
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts or path.parts[0] not in ("blobs", "manifests"):
                raise ValueError(f"bad member name {name!r}")
            if not isinstance(spec.get("sha256"), str) or not isinstance(spec.get("size"), int):
                raise ValueError(f"bad entry for {name!r}")
        if not isinstance(index.get("models"), list) or not index["models"]:
            raise ValueError("no models listed")
        return index
    except (ValueError, AttributeError, TypeError) as exc:
        raise InvalidBundle(f"{bundle}: invalid {INDEX_NAME}: {exc}") from None


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo, keep: bool) -> tuple[str, bytes]:
    source = tar.extractfile(member)
    assert source is not None
    hasher = hashlib.sha256()
    kept = bytearray()
    num_read = 0
    while chunk := source.read(CHUNK):
        hasher.update(chunk)
        num_read += len(chunk)
        if keep:
            kept += chunk
    if num_read != member.size:
        raise EOFError(f"{member.name} ends after {num_read} of {member.size} bytes")
    return hasher.hexdigest(), bytes(kept)


def _open(bundle: Path) -> tarfile.TarFile:
    return tarfile.open(bundle, "r:")  # uncompressed: GGUF weights do not compress, and streams read fast


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
