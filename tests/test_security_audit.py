"""The audit chain: appends verify; each kind of tampering (edit, delete, reorder, truncate) is caught and
named; rotation keeps the chain across files; a torn last line from a crash is cut off, not flagged; and
`lokal audit verify/tail/search` say so to people."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lokal.cli import app
from lokal.security.audit import AuditLog, log_files, search, verify

NUM_LINES = 6


def write_log(path: Path, num_lines: int = NUM_LINES, **options) -> AuditLog:
    log = AuditLog(path, **options)
    for index in range(num_lines):
        log.append({"route": "POST /api/chat", "key": f"k{index % 2}", "status": 200, "model": "smollm2"})
    return log


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    write_log(path)
    return path


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def test_an_untouched_log_verifies(log_path):
    result = verify(log_path)
    assert result.is_intact, result.problem
    assert (result.num_lines, result.first_seq, result.last_seq) == (NUM_LINES, 1, NUM_LINES)
    record = json.loads(lines_of(log_path)[0])
    assert record["prev"] == "0" * 64 and record["seq"] == 1
    assert oct(log_path.stat().st_mode & 0o777) == "0o600"


def test_an_edited_line_is_named(log_path):
    lines = lines_of(log_path)
    lines[2] = lines[2].replace('"status":200', '"status":201')
    rewrite(log_path, lines)
    result = verify(log_path)
    assert not result.is_intact
    assert "line 4" in result.problem and "seq 3" in result.problem and "edited" in result.problem


def test_an_edited_last_line_is_caught_by_the_head(log_path):
    lines = lines_of(log_path)
    lines[-1] = lines[-1].replace('"key":"k1"', '"key":"k0"')
    rewrite(log_path, lines)
    result = verify(log_path)
    assert not result.is_intact and "last line" in result.problem and "edited" in result.problem


def test_a_deleted_line_is_named(log_path):
    lines = lines_of(log_path)
    del lines[2]
    rewrite(log_path, lines)
    result = verify(log_path)
    assert not result.is_intact
    assert "line 3" in result.problem and "deleted" in result.problem


def test_reordered_lines_are_named(log_path):
    lines = lines_of(log_path)
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(log_path, lines)
    result = verify(log_path)
    assert not result.is_intact
    assert "line 2" in result.problem and "reordered" in result.problem


def test_a_truncated_end_is_caught(log_path):
    rewrite(log_path, lines_of(log_path)[:-2])
    result = verify(log_path)
    assert not result.is_intact
    assert "truncated" in result.problem and f"seq {NUM_LINES}" in result.problem


def test_a_torn_last_line_from_a_crash_is_cut_off_by_the_next_append(tmp_path):
    path = tmp_path / "audit.log"
    log = write_log(path, 3)
    with open(path, "ab") as file:
        file.write(b'{"seq":4,"prev":"ab')  # the process died mid-write, before the head moved
    assert verify(path).is_intact  # a torn last line is noted, not tampering
    assert any("incomplete" in note for note in verify(path).notes)
    log.append({"route": "POST /api/generate"})
    result = verify(path)
    assert result.is_intact, result.problem
    assert result.last_seq == 4 and not result.notes


def test_rotation_keeps_the_chain_across_files(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 20, max_bytes=600)
    files = log_files(path)
    assert len(files) > 2 and files[-1] == path
    result = verify(path)
    assert result.is_intact, result.problem
    assert (result.num_lines, result.first_seq, result.last_seq) == (20, 1, 20)
    # An edit in a rotated file is found there.
    first = files[0]
    rewrite(first, [line.replace("smollm2", "gemma3") for line in lines_of(first)])
    result = verify(path)
    assert not result.is_intact and first.name in result.problem


def test_removing_the_oldest_rotated_files_is_noted_not_failed(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 20, max_bytes=600)
    log_files(path)[0].unlink()
    result = verify(path)
    assert result.is_intact, result.problem
    assert result.first_seq > 1 and any("older files were removed" in note for note in result.notes)


def test_search_filters_by_field_and_text(log_path):
    assert len(list(search(log_path, fields={"key": "k1"}))) == NUM_LINES // 2
    assert len(list(search(log_path, text="SMOLLM2"))) == NUM_LINES
    assert list(search(log_path, text="gemma")) == []


def test_cli_verify_tail_and_search(log_path, monkeypatch):
    monkeypatch.setenv("LOKAL_AUDIT_LOG", str(log_path))
    runner = CliRunner()
    verified = runner.invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output
    assert f"intact, {NUM_LINES} lines" in verified.output
    tail = runner.invoke(app, ["audit", "tail", "-n", "2", "--json"])
    assert [json.loads(line)["seq"] for line in tail.output.splitlines()] == [NUM_LINES - 1, NUM_LINES]
    found = runner.invoke(app, ["audit", "search", "--key", "k0"])
    assert found.exit_code == 0 and len(found.output.splitlines()) == NUM_LINES // 2
    lines = lines_of(log_path)
    del lines[1]
    rewrite(log_path, lines)
    tampered = runner.invoke(app, ["audit", "verify"])
    assert tampered.exit_code == 1
    assert "tampered" in tampered.output and "deleted" in tampered.output


@pytest.mark.parametrize("record_bytes", [200, 150_000])  # lines shorter and longer than the block read from the end
def test_appends_read_only_the_end_of_a_long_log_and_keep_the_chain(tmp_path, record_bytes):
    from lokal.security.audit import TAIL_BLOCK

    path = tmp_path / "audit.log"
    log = AuditLog(path, fsync=False)
    for index in range(4 * TAIL_BLOCK // record_bytes + 3):
        log.append({"route": "POST /api/chat", "request": "x" * record_bytes, "n": index})
    with open(path, "ab") as file:
        file.write(b'{"seq":999,"prev":"' + b"y" * (2 * TAIL_BLOCK))  # torn, and longer than two blocks
    appended = log.append({"route": "POST /api/generate"})
    result = verify(path)
    assert result.is_intact, result.problem
    assert appended["seq"] == result.last_seq == result.num_lines
