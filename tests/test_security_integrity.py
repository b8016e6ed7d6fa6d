"""Integrity on load: a blob whose bytes were changed after the pull is refused with an error naming the model
and the blob, before llama.cpp sees it; `lokal verify` checks every blob and names the bad one."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lokal.cli import app
from lokal.config import Settings
from lokal.errors import IntegrityError
from lokal.security.integrity import check_for_load, is_marked_verified
from lokal.store.store import Store
from lokal.types import GenerateRequest
from server_fixture import MODEL


def weights_path(root: Path) -> Path:
    store = Store(root)
    return store.model_path(store.get(MODEL))


def flip_a_byte(path: Path, offset: int) -> None:
    """Same size, one byte changed: only a digest check can tell."""
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


def test_first_load_verifies_and_marks(smollm2_store_copy):
    store = Store(smollm2_store_copy)
    entry = store.get(MODEL)
    digest = entry.manifest.layer("model").digest
    assert not is_marked_verified(store, digest)
    check_for_load(store, entry)
    path = store.blobs.path(digest)
    assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the reference: hashlib itself
    assert is_marked_verified(store, digest)


def test_tampered_weights_are_refused_on_load(smollm2_store_copy):
    from lokal.runtime import Runtime

    store = Store(smollm2_store_copy)
    entry = store.get(MODEL)
    check_for_load(store, entry)  # verified once, as after a first load
    flip_a_byte(weights_path(smollm2_store_copy), 4096)
    runtime = Runtime(Settings(environ={"LOKAL_MODELS": str(smollm2_store_copy)}))

    async def generate() -> None:
        async for _ in runtime.generate(GenerateRequest(model=MODEL, prompt="hi", options={"num_predict": 1})):
            pass

    with pytest.raises(IntegrityError) as refused:
        asyncio.run(generate())
    message = refused.value.message
    assert f'"{MODEL}' in message and entry.manifest.layer("model").digest in message
    assert "pull it again" in message
    assert runtime.running() == []


def test_cli_verify_names_the_tampered_blob(smollm2_store_copy, monkeypatch):
    monkeypatch.setenv("LOKAL_MODELS", str(smollm2_store_copy))
    runner = CliRunner()
    clean = runner.invoke(app, ["verify"])
    assert clean.exit_code == 0, clean.output
    assert f"{MODEL}:latest: ok" in clean.output or f"{MODEL}: ok" in clean.output
    flip_a_byte(weights_path(smollm2_store_copy), 100)
    tampered = runner.invoke(app, ["verify", MODEL])
    assert tampered.exit_code == 1
    digest = Store(smollm2_store_copy).get(MODEL).manifest.layer("model").digest
    assert digest in tampered.output and "sha256 does not match" in tampered.output


def test_a_model_served_before_is_checked_again_once_its_weights_change(smollm2_store_copy):
    """Requests reuse an opened model while its files are unchanged; a byte flipped after the model served
    (and while it is still loaded) is still caught on the next request."""
    from lokal.runtime import Runtime

    runtime = Runtime(Settings(environ={"LOKAL_MODELS": str(smollm2_store_copy), "LOKAL_KEEP_ALIVE": "-1"}))

    async def generate() -> None:
        async for _ in runtime.generate(GenerateRequest(model=MODEL, prompt="hi", options={"num_predict": 1})):
            pass

    async def scenario() -> None:
        try:
            await generate()
            await generate()  # served from the opened model
            flip_a_byte(weights_path(smollm2_store_copy), 4096)
            with pytest.raises(IntegrityError):
                await generate()
        finally:
            await runtime.close()

    asyncio.run(scenario())
