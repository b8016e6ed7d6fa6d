"""Usage errors (unknown command or option) print the usage and exit 2, as click and ollama do."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("args, message", [
    (["bogus"], "No such command 'bogus'"),
    (["list", "--bogus"], "No such option: --bogus"),
    (["create"], "Missing argument"),
])
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "lokal", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Usage: " in done.stderr and "unexpected" not in done.stderr
