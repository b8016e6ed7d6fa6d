"""`lokal export` / `lokal import` and `lokal backup` / `lokal restore` on a real store holding the bundled
SmolLM2: round trips compared byte for byte with the source files (sha256 of each), damaged and truncated
bundles and backups refused with the target untouched, restore refused while a server answers."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
from server_fixture import free_port, pull_models
from typer.testing import CliRunner

from lokal.cli import app
from lokal.config import Settings
from lokal.store.backup import InvalidBackup, backup, restore, verify_backup
from lokal.store.bundle import InvalidBundle, import_bundle
from lokal.store.store import Store

MODEL = "smollm2"


def tree_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hashlib on the bytes; nothing of lokal's)."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and ".locks" not in path.parts}


def model_files(root: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digests(root).items() if k.startswith(("blobs/", "manifests/"))}


@pytest.fixture(scope="module")
def source_store(tmp_path_factory) -> Path:
    root = pull_models(tmp_path_factory.mktemp("source"), MODEL)
    Store(root).copy(MODEL, "second:tag")  # a second name over the same blobs
    return root


@pytest.fixture(scope="module")
def bundle(source_store, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "models.tar"
    result = CliRunner().invoke(app, ["export", MODEL, "second:tag", "-o", str(path)],
                                env={"LOKAL_MODELS": str(source_store)})
    assert result.exit_code == 0, result.output
    assert "exported smollm2:latest, second:tag" in result.output
    return path


def test_bundle_round_trip_through_the_cli(source_store, bundle, tmp_path):
    target = tmp_path / "target"
    result = CliRunner().invoke(app, ["import", str(bundle)], env={"LOKAL_MODELS": str(target)})
    assert result.exit_code == 0, result.output
    assert "imported smollm2:latest, second:tag" in result.output
    assert model_files(target) == model_files(source_store)
    listed = CliRunner().invoke(app, ["list"], env={"LOKAL_MODELS": str(target), "LOKAL_HOST": f"127.0.0.1:{free_port()}"})
    assert "smollm2:latest" in listed.output and "second:tag" in listed.output
    # Importing again is harmless: same files, nothing duplicated.
    assert import_bundle(Store(target), bundle) == ["smollm2:latest", "second:tag"]
    assert model_files(target) == model_files(source_store)


def test_the_bundle_carries_checksums_hashlib_agrees_with(source_store, bundle):
    import json

    with tarfile.open(bundle) as tar:
        index = json.loads(tar.extractfile("lokal-bundle.json").read())
        for name, spec in index["files"].items():
            data = tar.extractfile(name).read()
            assert hashlib.sha256(data).hexdigest() == spec["sha256"] and len(data) == spec["size"]
    blobs = {k for k in index["files"] if k.startswith("blobs/")}
    assert blobs == {k for k in model_files(source_store) if k.startswith("blobs/")}


def damaged_copy(bundle: Path, tmp_path: Path, offset: int) -> Path:
    copy = tmp_path / "damaged.tar"
    shutil.copyfile(bundle, copy)
    with open(copy, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x01]))
    return copy


def member_spans(bundle: Path) -> dict[str, tuple[int, int, int]]:
    """(header offset, data offset, data end) of each member: where the content of the bundle lies (a tar
    also ends in zero padding, which holds nothing)."""
    with tarfile.open(bundle) as tar:
        return {m.name: (m.offset, m.offset_data, m.offset_data + m.size) for m in tar}


def test_a_flipped_byte_anywhere_is_refused_and_the_store_untouched(bundle, tmp_path):
    spans = member_spans(bundle)
    weights = max(spans.values(), key=lambda span: span[2] - span[1])
    last = max(spans.values())
    # The middle of the weights, the index, the last member's data and the last member's header.
    for offset in ((weights[1] + weights[2]) // 2, spans["lokal-bundle.json"][1] + 100, last[2] - 5, last[0] + 3):
        target = tmp_path / f"store-{offset}"
        with pytest.raises(InvalidBundle):
            import_bundle(Store(target), damaged_copy(bundle, tmp_path, offset))
        assert not target.exists() or model_files(target) == {}, offset
    result = CliRunner().invoke(app, ["import", str(damaged_copy(bundle, tmp_path, (weights[1] + weights[2]) // 2))],
                                env={"LOKAL_MODELS": str(tmp_path / "cli-store")})
    assert result.exit_code == 1 and "damaged" in result.output, result.output
    assert not (tmp_path / "cli-store").exists() or model_files(tmp_path / "cli-store") == {}


def test_a_truncated_bundle_is_refused_and_the_store_untouched(bundle, tmp_path):
    last = max(member_spans(bundle).values())
    for keep in (bundle.stat().st_size // 2, 10_240, last[2] - 100, last[1]):
        truncated = tmp_path / "truncated.tar"
        with open(bundle, "rb") as source, open(truncated, "wb") as out:
            out.write(source.read(keep))
        target = tmp_path / f"store-{keep}"
        with pytest.raises(InvalidBundle, match="truncated|damaged|incomplete"):
            import_bundle(Store(target), truncated)
        assert not target.exists() or model_files(target) == {}, keep


def test_a_file_that_is_no_bundle_is_refused(tmp_path):
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        note = tmp_path / "note.txt"
        note.write_text("hello")
        tar.add(note, arcname="note.txt")
    with pytest.raises(InvalidBundle, match="not a lokal bundle"):
        import_bundle(Store(tmp_path / "store"), plain)
    with pytest.raises(InvalidBundle, match="no such bundle"):
        import_bundle(Store(tmp_path / "store"), tmp_path / "missing.tar")


# ---- backup and restore -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_store(source_store, tmp_path_factory) -> Path:
    """The source store plus the security files that live under it (keys and audit log)."""
    root = tmp_path_factory.mktemp("full") / "models"
    shutil.copytree(source_store, root)
    (root / "security").mkdir()
    (root / "security" / "keys.json").write_text('{"keys": [{"id": "k1", "hash": "scrypt$…"}]}')
    (root / "security" / "audit.log").write_text('{"seq": 1, "prev": "0"}\n{"seq": 2, "prev": "ab"}\n')
    (root / "blobs" / "sha256-0000-partial").write_bytes(b"an interrupted pull")  # transient: left out
    return root


def settings_for(store: Path, **extra: str) -> Settings:
    return Settings(environ={"LOKAL_MODELS": str(store), "LOKAL_HOST": f"127.0.0.1:{free_port()}",
                             "LOKAL_KEEP_ALIVE": "10m", **extra})


def test_backup_and_restore_round_trip_store_keys_audit_and_settings(full_store, tmp_path):
    backup_dir = tmp_path / "backup"
    result = CliRunner().invoke(app, ["backup", str(backup_dir)],
                                env={"LOKAL_MODELS": str(full_store), "LOKAL_KEEP_ALIVE": "10m"})
    assert result.exit_code == 0, result.output
    expected = {k: v for k, v in tree_digests(full_store).items() if not k.endswith("-partial")}
    assert tree_digests(backup_dir / "store") == expected
    # Restore into a fresh place, then over an existing store (which is kept aside, not deleted).
    target = tmp_path / "restored"
    outcome = restore(settings_for(target), backup_dir)
    assert tree_digests(target) == expected and outcome.replaced is None
    assert outcome.settings == {"LOKAL_MODELS": str(full_store), "LOKAL_KEEP_ALIVE": "10m"}
    (target / "security" / "keys.json").write_text("changed after the backup")
    result = CliRunner().invoke(app, ["restore", str(backup_dir)],
                                env={"LOKAL_MODELS": str(target), "LOKAL_HOST": f"127.0.0.1:{free_port()}"})
    assert result.exit_code == 0, result.output
    assert tree_digests(target) == expected
    [kept] = tmp_path.glob("restored.replaced-*")
    assert (kept / "security" / "keys.json").read_text() == "changed after the backup"
    assert "LOKAL_KEEP_ALIVE=10m" in result.output


def test_backup_refuses_a_non_empty_target(full_store, tmp_path):
    (tmp_path / "something").write_text("x")
    result = CliRunner().invoke(app, ["backup", str(tmp_path)], env={"LOKAL_MODELS": str(full_store)})
    assert result.exit_code == 1 and "not an empty directory" in result.output


def test_a_damaged_or_incomplete_backup_is_refused_and_the_store_untouched(full_store, tmp_path):
    backup_dir = tmp_path / "backup"
    backup(settings_for(full_store), backup_dir)
    target = tmp_path / "live"
    shutil.copytree(full_store, target)
    before = tree_digests(target)
    blob = max((backup_dir / "store" / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    with open(blob, "r+b") as file:
        file.seek(1000)
        byte = file.read(1)
        file.seek(1000)
        file.write(bytes([byte[0] ^ 0x80]))
    with pytest.raises(InvalidBackup, match="damaged"):
        restore(settings_for(target), backup_dir)
    assert tree_digests(target) == before and list(tmp_path.glob("*.replaced-*")) == []
    blob.unlink()
    with pytest.raises(InvalidBackup, match="missing"):
        verify_backup(backup_dir)
    (backup_dir / "backup.json").unlink()
    with pytest.raises(InvalidBackup, match="backup.json is missing"):
        restore(settings_for(target), backup_dir)
    assert tree_digests(target) == before


class _VersionHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = b'{"version": "0.1.0"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_restore_is_refused_while_a_server_answers_at_lokal_host(full_store, tmp_path):
    backup_dir = tmp_path / "backup"
    backup(settings_for(full_store), backup_dir)
    target = tmp_path / "live"
    shutil.copytree(full_store, target)
    before = tree_digests(target)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _VersionHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = Settings(environ={"LOKAL_MODELS": str(target), "LOKAL_HOST": f"127.0.0.1:{server.server_port}"})
        with pytest.raises(Exception, match="a lokal server is running"):
            restore(settings, backup_dir)
    finally:
        server.shutdown()
        server.server_close()
    assert tree_digests(target) == before


# ---- encrypted bundles ------------------------------------------------------------------------------------


def last_chunk_start(data: bytes) -> int:
    """Offset of the last chunk record of a sealed file (records: 4-byte big-endian length, then that much)."""
    from lokal.store.sealing import MAGIC

    position, start = len(MAGIC) + 16 + 7, 0
    while position < len(data):
        start = position
        position += 4 + int.from_bytes(data[position:position + 4], "big")
    return start


def test_an_encrypted_bundle_round_trips_and_refuses_a_wrong_passphrase_or_damage(source_store, tmp_path):
    from lokal.store.sealing import MAGIC

    secret = tmp_path / "passphrase"
    secret.write_text("correct horse battery staple\n")
    sealed = tmp_path / "sealed.tar"
    env = {"LOKAL_MODELS": str(source_store)}
    result = CliRunner().invoke(app, ["export", MODEL, "-o", str(sealed), "--passphrase-file", str(secret)], env=env)
    assert result.exit_code == 0, result.output
    data = sealed.read_bytes()
    weights = max((source_store / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    with open(weights, "rb") as file:
        plain_head = file.read(64)  # 64 bytes cannot turn up in ciphertext by chance
    assert data.startswith(MAGIC) and b"lokal-bundle.json" not in data and plain_head not in data
    target = tmp_path / "target"
    result = CliRunner().invoke(app, ["import", str(sealed), "--passphrase-file", str(secret)],
                                env={"LOKAL_MODELS": str(target)})
    assert result.exit_code == 0, result.output
    assert model_files(target) == {k: v for k, v in model_files(source_store).items()
                                   if "second" not in k}
    wrong = tmp_path / "wrong"
    wrong.write_text("guess")
    for name, bad in (("wrong", None), ("flipped", len(data) // 2), ("truncated", -1)):
        candidate = tmp_path / f"{name}.tar"
        if bad == -1:
            candidate.write_bytes(data[:last_chunk_start(data)])  # cut exactly before the last chunk
        elif bad is not None:
            candidate.write_bytes(data[:bad] + bytes([data[bad] ^ 1]) + data[bad + 1:])
        else:
            candidate.write_bytes(data)
        store = tmp_path / f"store-{name}"
        result = CliRunner().invoke(app, ["import", str(candidate), "--passphrase-file",
                                          str(wrong if name == "wrong" else secret)],
                                    env={"LOKAL_MODELS": str(store)})
        assert result.exit_code == 1, (name, result.output)
        assert "wrong passphrase, or the file is damaged" in result.output or "truncated" in result.output, result.output
        assert not store.exists() or model_files(store) == {}, name
