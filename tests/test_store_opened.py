"""OpenedModels: a model opened for a request is reused while the files it is made of are unchanged."""

from __future__ import annotations

import os
import shutil

import pytest

from lokal.security.encryption import Cipher
from lokal.store.opened import OpenedModels
from lokal.store.store import Store
from server_fixture import MODEL


@pytest.fixture
def store(smollm2_store_copy) -> Store:
    return Store(smollm2_store_copy)


def opened_once(store: Store) -> OpenedModels:
    opened = OpenedModels(store)
    files = opened.snapshot(store.get(MODEL))
    opened.remember(MODEL, store.open(MODEL), files)
    return opened


def test_unchanged_model_is_reused(store):
    opened = opened_once(store)
    first = opened.get(MODEL)
    assert first is not None and first.entry.digest == store.get(MODEL).digest
    assert opened.get(MODEL) is first
    assert opened.get("other") is None  # another name was never opened


@pytest.mark.parametrize("change", ["weights", "config", "manifest"])
def test_any_changed_file_opens_again(store, change):
    opened = opened_once(store)
    entry = store.get(MODEL)
    if change == "manifest":
        path = entry.path
    else:
        layer = entry.manifest.layer("model") if change == "weights" else entry.manifest.config
        path = store.blobs.path(layer.digest)
    later = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))  # same bytes, touched: still not taken on trust
    assert opened.get(MODEL) is None


def test_removed_model_is_not_served(store):
    opened = opened_once(store)
    store.remove(MODEL)
    assert opened.get(MODEL) is None


def test_snapshot_taken_before_a_change_never_vouches_for_it(store):
    opened = OpenedModels(store)
    entry = store.get(MODEL)
    files = opened.snapshot(entry)  # as the runtime does: before the integrity check
    weights = store.blobs.path(entry.manifest.layer("model").digest)
    later = weights.stat().st_mtime_ns + 1_000_000_000
    os.utime(weights, ns=(later, later))  # changed while being checked
    opened.remember(MODEL, store.open(MODEL), files)
    assert opened.get(MODEL) is None


def test_encrypted_store_is_not_cached(pulled_smollm2_store, tmp_path):
    store = Store(tmp_path / "models", cipher=Cipher(bytes(range(32))))
    shutil.copytree(pulled_smollm2_store, store.root)
    opened = OpenedModels(store)
    opened.remember(MODEL, Store(store.root).open(MODEL), opened.snapshot(store.get(MODEL)))
    assert opened.get(MODEL) is None
