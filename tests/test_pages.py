"""Memory handed back to the kernel: the C heap's free pages (engine/pages.py)."""

from __future__ import annotations

import ctypes

import pytest

from lokal.engine.pages import release_free_heap
from lokal.hardware import process_rss


def test_release_free_heap_gives_freed_c_memory_back_to_the_kernel():
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim") or process_rss() is None:
        pytest.skip("glibc on Linux only: elsewhere release_free_heap does nothing")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block, count = 4096, 16384  # 64 MB in blocks far below malloc's mmap threshold, like a vocabulary's strings
    blocks = [libc.malloc(block) for _ in range(count)]
    for address in blocks:
        ctypes.memset(address, 1, block)
    pinned = libc.malloc(block)  # live memory after them: the heap cannot just shrink its top on free
    for address in blocks:
        libc.free(address)
    try:
        before = process_rss()
        release_free_heap()
        assert before - process_rss() > 32 * 1024 * 1024, (before, process_rss())
    finally:
        libc.free(pinned)
