from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lokal.errors import DigestMismatch, InvalidDigest, StoreError
from lokal.store.blobs import STALE_PARTIAL_SECONDS, BlobStore


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def visible_files(root: Path) -> set[str]:
    return {entry.name for entry in root.iterdir() if entry.name != ".locks"} if root.exists() else set()


def start_child(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait(timeout=30)
        raise AssertionError(f"child exited early: {child.stderr.read() if child.stderr else ''}")
    return line.strip()


def test_add_bytes_names_and_lists_blobs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = random_bytes(300_000)
    digest = store.add_bytes(data)
    assert digest == sha256_digest(data)
    assert store.path(digest).name == "sha256-" + hashlib.sha256(data).hexdigest()
    assert store.path(digest).read_bytes() == data
    assert store.exists(digest) and store.size(digest) == len(data) and store.verify(digest)
    # Adding the same bytes again stores nothing new and leaves no temp file behind.
    assert store.add_bytes(data) == digest
    assert visible_files(store.root) == {store.path(digest).name}
    # Partial, temporary and malformed names are never blobs.
    (store.root / f"sha256-{'a' * 64}-partial").write_bytes(b"x")
    (store.root / "tmp-0123-partial").write_bytes(b"x")
    (store.root / f"sha256-{'b' * 63}").write_bytes(b"x")
    (store.root / f"sha256-{'C' * 64}").write_bytes(b"x")
    assert store.all_digests() == {digest}
    assert not store.exists("sha256:" + "a" * 64)


def test_add_file_copies_and_hashes(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(random_bytes(2_500_000, seed=1))
    store = BlobStore(tmp_path / "blobs")
    digest = store.add_file(source)
    assert digest == sha256_digest(source.read_bytes())
    assert store.path(digest).read_bytes() == source.read_bytes()
    assert store.path(digest).stat().st_ino != source.stat().st_ino  # a copy, not a link


def test_bad_digests_and_lock_keys_are_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    for bad in ("", "sha256:abc", "md5:" + "0" * 32, "sha256:" + "z" * 64):
        with pytest.raises(InvalidDigest, match="expected sha256:<64 hex digits>"):
            store.path(bad)
    with pytest.raises(StoreError, match="not in the store"):
        store.size("sha256:" + "0" * 64)
    with pytest.raises(StoreError, match="invalid lock key"):
        with store.lock("../escape"):
            pass


def test_dash_and_upper_case_digest_forms_name_the_same_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.add_bytes(b"hello")
    hexdigest = digest.removeprefix("sha256:")
    assert store.exists("sha256-" + hexdigest) and store.exists("sha256:" + hexdigest.upper())


_SLOW_WRITER = """
    import sys
    from pathlib import Path
    from lokal.store.blobs import BlobStore
    root, digest, source, chunk_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    data = Path(source).read_bytes()
    with BlobStore(Path(root)).writer(digest) as writer:
        print("offset", writer.offset, flush=True)
        for start in range(writer.offset, len(data), chunk_size):
            writer.write(data[start:start + chunk_size])
            print("wrote", writer.offset, flush=True)
            sys.stdin.readline()  # the test decides when the next chunk goes
        writer.commit()
    print("committed", flush=True)
"""


def test_killed_writer_leaves_a_resumable_partial(tmp_path: Path) -> None:
    data = random_bytes(1_000_000, seed=2)
    digest = sha256_digest(data)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    store = BlobStore(tmp_path / "blobs")
    chunk_size = 64 * 1024

    child = start_child(_SLOW_WRITER, str(store.root), digest, str(source), str(chunk_size))
    try:
        assert read_line(child) == "offset 0"
        for num_chunks in (1, 2, 3):
            assert read_line(child) == f"wrote {num_chunks * chunk_size}"
            if num_chunks < 3:
                assert child.stdin is not None
                child.stdin.write("\n")
                child.stdin.flush()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        child.kill()

    # Nothing half-written is visible as a blob; the bytes so far wait in the partial.
    assert not store.exists(digest)
    assert store.all_digests() == set()
    partial = store.root / f"sha256-{digest.removeprefix('sha256:')}-partial"
    assert partial.read_bytes() == data[:3 * chunk_size]

    with store.writer(digest) as writer:
        assert writer.offset == 3 * chunk_size
        writer.write(data[writer.offset:])
        assert writer.commit() == digest
    assert store.verify(digest)
    assert store.path(digest).read_bytes() == data
    assert not partial.exists()


def test_failure_inside_the_block_keeps_known_partials_and_drops_unknown_temps(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = random_bytes(10_000, seed=3)
    digest = sha256_digest(data)
    with pytest.raises(RuntimeError):
        with store.writer(digest) as writer:
            writer.write(data[:4000])
            raise RuntimeError("connection reset")
    assert visible_files(store.root) == {f"sha256-{digest.removeprefix('sha256:')}-partial"}
    with pytest.raises(RuntimeError):
        with store.writer() as writer:
            writer.write(data)
            raise RuntimeError("connection reset")
    assert visible_files(store.root) == {f"sha256-{digest.removeprefix('sha256:')}-partial"}
    assert store.all_digests() == set()


def test_second_writer_of_the_same_partial_is_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = sha256_digest(b"abc")
    with store.writer(digest) as first:
        first.write(b"a")
        with pytest.raises(StoreError, match="being written by another process"):
            with store.writer(digest):
                pass
        first.write(b"bc")
        assert first.commit() == digest
    assert store.path(digest).read_bytes() == b"abc"


def test_digest_mismatch_stores_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    expected = sha256_digest(b"the real weights")
    with pytest.raises(DigestMismatch) as caught:
        with store.writer(expected) as writer:
            writer.write(b"something else")
            writer.commit()
    assert caught.value.expected == expected
    assert caught.value.actual == sha256_digest(b"something else")
    assert "nothing was stored" in caught.value.message
    assert visible_files(store.root) == set()
    assert store.all_digests() == set()


_FILE_SIZE_LIMITED_WRITER = """
    import json, resource, signal, sys, hashlib
    from pathlib import Path
    from lokal.errors import DiskFull
    from lokal.store.blobs import BlobStore
    root, limit, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    store = BlobStore(Path(root))
    data = bytes(range(256)) * (limit * 4 // 256)
    # The kernel then answers writes past `limit` with EFBIG, as a full disk answers ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        if mode == "unknown":
            store.add_bytes(data)
        else:
            with store.writer("sha256:" + hashlib.sha256(data).hexdigest()) as writer:
                for start in range(0, len(data), 4096):
                    writer.write(data[start:start + 4096])
                writer.commit()
        print(json.dumps({"error": None}))
    except DiskFull as exc:
        print(json.dumps({"error": type(exc).__name__, "message": exc.message, "status": exc.status}))
"""


@pytest.mark.parametrize("mode", ["unknown", "known"])
def test_disk_full_raises_removes_the_temp_and_keeps_the_store(tmp_path: Path, mode: str) -> None:
    store = BlobStore(tmp_path / "blobs")
    existing = store.add_bytes(random_bytes(200_000, seed=4))  # larger than the child's limit
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(_FILE_SIZE_LIMITED_WRITER), str(store.root),
                            str(64 * 1024), mode], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    outcome = json.loads(child.stdout)
    assert outcome["error"] == "DiskFull"
    assert outcome["message"].startswith("disk full while writing")
    assert outcome["status"] == 507
    assert visible_files(store.root) == {store.path(existing).name}
    assert store.verify(existing)


_LOCKED_DOWNLOADER = """
    import hashlib, sys
    from pathlib import Path
    from lokal.store.blobs import BlobStore
    root, source, log = sys.argv[1], sys.argv[2], sys.argv[3]
    store = BlobStore(Path(root))
    data = Path(source).read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    print("waiting", flush=True)
    with store.lock(digest):
        print("locked", flush=True)
        if store.exists(digest):
            print("skipped", flush=True)
        else:
            sys.stdin.readline()  # the test decides when the download runs
            with open(log, "a") as record:
                record.write("download\\n")
            with store.writer(digest) as writer:
                writer.write(data)
                writer.commit()
            print("downloaded", flush=True)
"""


def test_lock_makes_two_processes_download_a_blob_once(tmp_path: Path) -> None:
    data = random_bytes(500_000, seed=5)
    digest = sha256_digest(data)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    log = tmp_path / "downloads.log"
    store = BlobStore(tmp_path / "blobs")
    args = (str(store.root), str(source), str(log))

    first = start_child(_LOCKED_DOWNLOADER, *args)
    second = None
    try:
        assert read_line(first) == "waiting"
        assert read_line(first) == "locked"
        second = start_child(_LOCKED_DOWNLOADER, *args)
        assert read_line(second) == "waiting"
        # The lock is really held across processes while the first one downloads.
        fd = os.open(store.root / ".locks" / f"{digest.replace(':', '-')}.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        first_out, _ = first.communicate("\n", timeout=60)
        second_out, _ = second.communicate("\n", timeout=60)  # a second download would consume this line
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert first_out.split() == ["downloaded"]
    assert second_out.split() == ["locked", "skipped"]
    assert log.read_text().splitlines() == ["download"]
    assert store.verify(digest)


def test_gc_removes_unreferenced_blobs_and_only_abandoned_partials(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    kept, dropped_a, dropped_b = (store.add_bytes(random_bytes(1000, seed=seed)) for seed in (6, 7, 8))

    stale = store.root / f"sha256-{'1' * 64}-partial"
    fresh = store.root / f"sha256-{'2' * 64}-partial"
    held = store.root / f"sha256-{'3' * 64}-partial"
    for partial in (stale, fresh, held):
        partial.write_bytes(b"partial bytes")
    long_ago = stale.stat().st_mtime - STALE_PARTIAL_SECONDS - 60
    os.utime(stale, (long_ago, long_ago))
    os.utime(held, (long_ago, long_ago))

    with store.writer("sha256:" + "3" * 64):  # a paused pull holds this partial
        removed = store.gc({kept})
    assert removed == sorted([dropped_a, dropped_b])
    assert store.all_digests() == {kept}
    assert not stale.exists()
    assert fresh.exists() and held.exists()
