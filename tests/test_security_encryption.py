"""Encryption at rest: AES-256-GCM chunks round-trip and fail closed; a store pulled with a key holds no
plaintext and still runs its model (answers compared with llama-cpp-python on the original file); a wrong or
missing key is a clear error; `lokal encrypt --all` killed mid-way (SIGKILL) resumes and finishes."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lokal.config import Settings
from lokal.errors import DecryptionError
from lokal.llm import LLM
from lokal.security.encryption import CHUNK_SIZE, HEADER_SIZE, Cipher, plaintext_size
from lokal.store.store import Store
from server_fixture import MODEL, NUM_PREDICT, Reference, pull_models

KEY = secrets.token_bytes(32)
OTHER_KEY = secrets.token_bytes(32)
PROMPT = "The capital of France is"


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 7])
def test_chunked_round_trip(size):
    data = secrets.token_bytes(size)
    sealed = io.BytesIO()
    Cipher(KEY).encrypt_stream(io.BytesIO(data), sealed)
    assert plaintext_size(len(sealed.getvalue())) == size
    assert b"".join(Cipher(KEY).decrypt_chunks(io.BytesIO(sealed.getvalue()), "test")) == data


def test_wrong_key_and_tampering_fail_closed():
    data = secrets.token_bytes(2 * CHUNK_SIZE + 5)
    sealed = io.BytesIO()
    Cipher(KEY).encrypt_stream(io.BytesIO(data), sealed)
    raw = sealed.getvalue()
    with pytest.raises(DecryptionError, match="wrong encryption key"):
        b"".join(Cipher(OTHER_KEY).decrypt_chunks(io.BytesIO(raw), "test"))
    flipped = bytearray(raw)
    flipped[HEADER_SIZE + 10] ^= 1
    truncated = raw[:HEADER_SIZE + CHUNK_SIZE + 16]  # the last chunks dropped
    for damaged in (bytes(flipped), truncated):
        with pytest.raises(DecryptionError):
            b"".join(Cipher(KEY).decrypt_chunks(io.BytesIO(damaged), "test"))


def encrypted_settings(root: Path, key: bytes | None = KEY) -> Settings:
    environ = {"LOKAL_MODELS": str(root)}
    if key is not None:
        environ["LOKAL_ENCRYPTION_KEY"] = key.hex()
    return Settings(environ=environ)


@pytest.fixture(scope="module")
def encrypted_store(tmp_path_factory) -> Path:
    from lokal.store.sources import pull

    root = tmp_path_factory.mktemp("encrypted")
    settings = encrypted_settings(root)
    for _ in pull(Store.from_settings(settings), MODEL, settings):
        pass
    return root


def test_pulled_blobs_are_encrypted_on_disk(encrypted_store, smollm2_path):
    blobs = [p for p in (encrypted_store / "blobs").iterdir() if p.name.startswith("sha256-") and p.is_file()]
    assert len(blobs) >= 3
    original = Path(smollm2_path).read_bytes()
    for blob in blobs:
        head = blob.read_bytes()[:64]
        assert head.startswith(b"LKENC001")
        assert not head.startswith(b"GGUF") and original[1000:1064] not in blob.read_bytes()[:2 << 20]
    # The manifest still says the plaintext's digest and size, as Ollama computes them.
    store = Store.from_settings(encrypted_settings(encrypted_store))
    entry = store.get(MODEL)
    layer = entry.manifest.layer("model")
    assert layer.size == len(original)
    assert store.blobs.verify(layer.digest)


def test_encrypted_store_runs_the_model(encrypted_store, smollm2_path):
    reference = Reference(smollm2_path).complete(PROMPT)
    with LLM(MODEL, settings=encrypted_settings(encrypted_store)) as llm:
        text = llm.generate(PROMPT, raw=True, options={"temperature": 0, "num_predict": NUM_PREDICT}).text
        plaintext = llm.runtime.store.open(MODEL).path  # the 0600 copy llama.cpp reads
        assert plaintext.is_file() and plaintext.stat().st_mode & 0o777 == 0o600
        assert plaintext.read_bytes()[:4] == b"GGUF"
    assert text == reference
    assert not plaintext.exists()  # removed when the model unloaded, not only when the process exits


def test_wrong_or_missing_key_is_a_clear_error(encrypted_store):
    store = Store.from_settings(encrypted_settings(encrypted_store, OTHER_KEY))
    with pytest.raises(DecryptionError, match="wrong encryption key"):
        store.model_path(store.get(MODEL))
    keyless = Store.from_settings(encrypted_settings(encrypted_store, None))
    for read in (keyless.model_path, lambda entry: keyless.layer_text(entry, "license")):
        with pytest.raises(DecryptionError, match="is encrypted: set LOKAL_ENCRYPTION_KEY"):
            read(keyless.get(MODEL))


def _cli(root: Path, *args: str, key_file: Path) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    environ.update({"LOKAL_MODELS": str(root), "LOKAL_ENCRYPTION_KEY_FILE": str(key_file), "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen([sys.executable, "-m", "lokal", *args], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_migration_killed_midway_resumes(tmp_path_factory, smollm2_path):
    pristine = pull_models(tmp_path_factory.mktemp("plain"), MODEL)
    root = tmp_path_factory.mktemp("migrate") / "models"
    shutil.copytree(pristine, root)
    key_file = root.parent / "store.key"
    key_file.write_text(KEY.hex())
    store = Store(root)
    weights = store.blobs.path(store.get(MODEL).manifest.layer("model").digest)
    process = _cli(root, "encrypt", "--all", key_file=key_file)
    sealing = weights.with_name(weights.name + "-sealing")
    deadline = time.monotonic() + 120
    while not (sealing.exists() and sealing.stat().st_size > 0) and time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # mid-way through the weights
    process.wait()
    assert weights.read_bytes()[:4] == b"GGUF"  # the blob being converted is untouched
    assert Path(smollm2_path).read_bytes() == weights.read_bytes()

    resumed = _cli(root, "encrypt", "--all", key_file=key_file)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "encrypted" in output
    assert not sealing.exists()
    assert all(p.read_bytes()[:8] == b"LKENC001" for p in (root / "blobs").glob("sha256-*") if p.is_file())
    again = _cli(root, "encrypt", "--all", key_file=key_file)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "0 blobs encrypted" in output, output
    verified = _cli(root, "verify", key_file=key_file)
    output, _ = verified.communicate(timeout=300)
    assert verified.returncode == 0 and "ok" in output, output

    decrypted = _cli(root, "decrypt", "--all", key_file=key_file)
    output, _ = decrypted.communicate(timeout=300)
    assert decrypted.returncode == 0, output
    assert Path(smollm2_path).read_bytes() == weights.read_bytes()
