"""Idle memory of ``lokal serve``: resident set size after one chat request, with default settings (4 slots ×
4,096-token context) and SmolLM2 loaded, and where it goes.

Starts ``lokal serve`` on a free loopback port over a temporary store holding the bundled SmolLM2, asks one
short chat question through /api/chat, waits until the server is idle, then reads the server process's
``/proc/PID/smaps``: resident bytes per mapping, grouped as the model file (memory-mapped weights), large
anonymous mappings (llama.cpp's buffers: KV cache, compute graph, logits), the heap and small anonymous
mappings (Python objects, malloc arenas), and shared libraries (by file). Target: ≤ 350 MB in all.

``--warm-cache N`` first fills the prompt cache the way a day of use does: a server answers N different
≈1,000-token prompts and stops (writing its idle slots' KV to the store), and the measured server is the
next one, started over that cache.

    .venv/bin/python benchmarks/idle_rss.py
    .venv/bin/python benchmarks/idle_rss.py --warm-cache 4               # after a restart over a full cache
    .venv/bin/python benchmarks/idle_rss.py --env LOKAL_NUM_PARALLEL=1   # compare a setting
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

LARGE = 8 << 20  # anonymous mappings at least this big are llama.cpp's buffers (malloc's arenas are smaller)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smaps(pid: int) -> list[tuple[str, int, int]]:
    """(name, size, resident bytes) of every mapping of the process."""
    result = []
    name, size = "", 0
    header = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        match = header.match(line)
        if match:
            name, size = match.group(3), int(match.group(2), 16) - int(match.group(1), 16)
        elif line.startswith("Rss:"):
            result.append((name, size, int(line.split()[1]) * 1024))
    return result


def breakdown(pid: int) -> dict[str, int]:
    groups: dict[str, int] = defaultdict(int)
    for name, size, rss in smaps(pid):
        if name.endswith(".gguf") or "sha256-" in name:
            groups["model weights (mmap)"] += rss
        elif name == "" and size >= LARGE:
            groups["large anonymous (llama.cpp buffers)"] += rss
        elif name in ("", "[heap]"):
            groups["heap + small anonymous (Python, malloc)"] += rss
        elif ".so" in name:
            groups[f"lib {Path(name).name.split('.so')[0]}"] += rss
        else:
            groups[name or "other"] += rss
    return dict(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)")
    parser.add_argument("--top", type=int, default=12, help="how many groups to list")
    parser.add_argument("--warm-cache", type=int, default=0, metavar="N",
                        help="measure after a restart over the prompt cache of N long prompts")
    args = parser.parse_args()
    from lokal.config import Settings
    from lokal.store.sources import pull
    from lokal.store.store import Store

    with tempfile.TemporaryDirectory() as root:
        for _ in pull(Store(root), "smollm2", Settings(environ={"LOKAL_MODELS": root})):
            pass
        if args.warm_cache:
            with started(root, args.env) as (server, url):
                for i in range(args.warm_cache):
                    prompt = f"Conversation {i}. " + " ".join(f"word{i}_{j}" for j in range(400))
                    httpx.post(url + "/api/generate", timeout=600, json={
                        "model": "smollm2", "prompt": prompt, "stream": False,
                        "options": {"temperature": 0, "num_predict": 8}}).raise_for_status()
                busy = sum(breakdown(server.pid).values())
            cached = sum(path.stat().st_size for path in Path(root).rglob("*.kv"))
            print(f"warm-up server: {busy / 1e6:.0f} MB after {args.warm_cache} long prompts; "
                  f"{cached / 1e6:.0f} MB of prompt cache written at its exit")
        with started(root, args.env) as (server, url):
            before = int(Path(f"/proc/{server.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            answer = httpx.post(url + "/api/chat", timeout=300, json={
                "model": "smollm2", "stream": False, "options": {"temperature": 0, "num_predict": 32},
                "messages": [{"role": "user", "content": "What is the capital of France?"}]})
            answer.raise_for_status()
            time.sleep(2)  # idle: the engine thread has ended
            groups = breakdown(server.pid)
            total = sum(groups.values())
            restarted = " after a restart over that cache" if args.warm_cache else ""
            print(f"lokal serve{restarted}, {' '.join(args.env) or 'default settings'}: RSS {before / 1e6:.0f} MB before the "
                  f"first request, {total / 1e6:.0f} MB idle after it")
            for name, rss in sorted(groups.items(), key=lambda item: -item[1])[:args.top]:
                print(f"  {rss / 1e6:8.1f} MB  {name}")


@contextmanager
def started(root: str, settings: list[str]) -> Iterator[tuple[subprocess.Popen, str]]:
    """``lokal serve`` over the store at ``root`` on a free port, answering; stopped (SIGTERM) afterwards."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    env.update(LOKAL_HOST=f"127.0.0.1:{port}", LOKAL_MODELS=root)
    env.update(dict(item.split("=", 1) for item in settings))
    server = subprocess.Popen([sys.executable, "-m", "lokal.server.serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield server, url
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    main()
