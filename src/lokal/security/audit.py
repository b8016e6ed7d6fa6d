"""The audit log: one JSON line per audited request, each chained to the one before by hash.

Every line carries ``seq`` (1, 2, 3, … across all files) and ``prev``, the sha256 of the previous line's
bytes (64 zeros for the first). Editing a line breaks the next line's ``prev``; deleting or reordering
lines breaks ``seq``; removing lines from the end is caught by the head file (``<log>.head``), which
records the last line's seq and hash after every append. ``verify`` names the first line that is wrong.

Rotation by size: when the live file (``audit.log``) passes ``max_bytes`` it is renamed to
``audit.log.<first seq>`` and a new live file starts; its first line's ``prev`` is the last line of the old
file, so the chain runs on across files. Rotated files are kept; removing the oldest is reported by verify
as a chain that starts after seq 1, not as tampering.

Durability (the fsync policy): a line is written with one ``write`` on an ``O_APPEND`` descriptor, then,
with ``fsync=True`` (the default, LOKAL_AUDIT_FSYNC), fsynced before the head file is replaced (itself
written to a temp file, fsynced and renamed). A crash can therefore leave at most a torn last line (no
newline) or a head one line behind: the writer cuts a torn line off when it opens the log, and verify
accepts a log one line ahead of its head. With ``fsync=False`` the OS decides when lines reach the disk:
a power cut may lose the last lines, and verify then reports the log as truncated.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lokal.errors import StoreError

GENESIS = "0" * 64
TAIL_BLOCK = 64 * 1024  # bytes read at a time from the end of the log to find its last line


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def log_files(path: Path) -> list[Path]:
    """The rotated files (``<name>.<first seq>``), oldest first, then the live file."""
    rotated = []
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            suffix = entry.name[len(path.name) + 1:] if entry.name.startswith(path.name + ".") else ""
            if suffix.isdigit():
                rotated.append((int(suffix), entry))
    files = [entry for _, entry in sorted(rotated)]
    if path.exists():
        files.append(path)
    return files


def _rotated_name(path: Path, first_seq: int) -> Path:
    return path.with_name(f"{path.name}.{first_seq:012d}")


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AuditLog:
    """Appends chained lines. Safe across threads, and across processes sharing the file (flock)."""

    def __init__(self, path: Path | str, *, max_bytes: int = 64 * 1024 * 1024, fsync: bool = True):
        self.path = Path(path).expanduser()
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._mutex = threading.Lock()

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write one record (a JSON object); returns it with ``seq`` and ``prev`` filled in."""
        with self._mutex:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                seq, prev = self._last()
                if self.path.exists() and self.path.stat().st_size >= self.max_bytes:
                    self._rotate()
                line_record = {"seq": seq + 1, "prev": prev, **record}
                line = json.dumps(line_record, separators=(",", ":"), ensure_ascii=False, default=str).encode()
                self._write_line(line)
                self._write_head(seq + 1, line_hash(line))
                return line_record
            finally:
                os.close(lock_fd)

    def _last(self) -> tuple[int, str]:
        """(seq, hash) of the last complete line, cutting off a torn one a crash left behind."""
        for file in reversed(log_files(self.path)):
            line = _last_line(file)
            if line:
                try:
                    seq = int(json.loads(line)["seq"])
                except (ValueError, KeyError, TypeError):
                    raise StoreError(f"the audit log {file} ends with a line that is not an audit record; "
                                     f"run `lokal audit verify`") from None
                return seq, line_hash(line)
        return 0, GENESIS

    def _write_line(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line + b"\n")
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _write_head(self, seq: int, digest: str) -> None:
        head = _head_path(self.path)
        temp = head.with_name(head.name + ".tmp")
        with open(temp, "w", encoding="utf-8") as file:
            json.dump({"seq": seq, "hash": digest}, file)
            if self.fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temp, head)
        if self.fsync:
            _fsync_directory(self.path.parent)

    def _rotate(self) -> None:
        first_line = self.path.open("rb").readline()
        try:
            first_seq = int(json.loads(first_line)["seq"])
        except (ValueError, KeyError, TypeError):
            first_seq = 0
        os.replace(self.path, _rotated_name(self.path, first_seq))


def _last_line(file: Path) -> bytes:
    """The file's last complete line (without its newline), b"" if none; a torn last line (no newline: a
    crash mid-write) is cut off the file first. Reads from the end, a block at a time, so appending costs the
    same however long the log has grown (it is read on every request)."""
    with open(file, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail, start = b"", size
        while start > 0:
            start = max(0, start - TAIL_BLOCK)
            handle.seek(start)
            tail = handle.read(size - start)
            complete = tail[:tail.rfind(b"\n") + 1]  # up to the last newline
            if complete.count(b"\n") >= 2 or (complete and start == 0):
                break
        cut = tail.rfind(b"\n") + 1
        if cut < len(tail):  # torn
            handle.truncate(start + cut)
            tail = tail[:cut]
    lines = tail.splitlines()
    return lines[-1] if lines else b""


# ---- reading ------------------------------------------------------------------------------------------------


@dataclass
class AuditLine:
    file: Path
    number: int  # line number within its file, from 1
    raw: bytes
    record: dict[str, Any] | None  # None: not a JSON object


def read_lines(path: Path | str) -> Iterator[AuditLine]:
    for file in log_files(Path(path).expanduser()):
        with open(file, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                text = raw.rstrip(b"\n")
                try:
                    record = json.loads(text)
                except ValueError:
                    record = None
                yield AuditLine(file, number, raw, record if isinstance(record, dict) else None)


@dataclass
class Verification:
    is_intact: bool
    num_lines: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    problem: str | None = None  # the first thing wrong, naming file and line
    notes: list[str] = field(default_factory=list)


def verify(path: Path | str) -> Verification:
    """Walk the chain across every file; report the first edited, deleted, reordered or cut-off line."""
    path = Path(path).expanduser()
    result = Verification(is_intact=True)
    prev_hash: str | None = None
    prev_seq: int | None = None

    def fail(line: AuditLine, why: str) -> Verification:
        result.is_intact = False
        result.problem = f"{line.file.name} line {line.number}: {why}"
        return result

    all_seqs = {line.record.get("seq") for line in read_lines(path) if line.record is not None}
    for line in read_lines(path):
        if not line.raw.endswith(b"\n"):
            result.notes.append(f"{line.file.name} line {line.number} is incomplete (a crash while writing); "
                                f"ignored")
            continue
        text = line.raw.rstrip(b"\n")
        if line.record is None or not isinstance(line.record.get("seq"), int) or "prev" not in line.record:
            return fail(line, "not an audit record (edited or inserted)")
        seq, prev = line.record["seq"], line.record["prev"]
        if prev_seq is None:
            result.first_seq = seq
            if seq != 1:
                result.notes.append(f"the chain starts at seq {seq}: older files were removed")
            elif prev != GENESIS:
                return fail(line, "the first line does not start the chain (edited)")
        else:
            if seq <= prev_seq:
                return fail(line, f"seq {seq} after seq {prev_seq}: lines were reordered or repeated")
            if seq != prev_seq + 1 and prev_seq + 1 in all_seqs:
                return fail(line, f"seq {seq} after seq {prev_seq}: lines were reordered")
            if seq != prev_seq + 1:
                return fail(line, f"seq {seq} after seq {prev_seq}: {seq - prev_seq - 1} line(s) before it "
                                  f"were deleted")
            if prev != prev_hash:
                return fail(line, f"seq {seq} does not chain to the line before it: that line (seq {prev_seq}) "
                                  f"was edited")
        prev_seq, prev_hash = seq, line_hash(text)
        result.num_lines += 1
        result.last_seq = seq
    head_file = _head_path(path)
    if head_file.exists():
        try:
            head = json.loads(head_file.read_text())
            head_seq, head_hash = int(head["seq"]), str(head["hash"])
        except (ValueError, KeyError, TypeError):
            result.is_intact = False
            result.problem = f"{head_file.name} is not a valid head record (edited)"
            return result
        if prev_seq is None or prev_seq < head_seq:
            result.is_intact = False
            result.problem = (f"the log ends at seq {prev_seq or 0} but seq {head_seq} was written: "
                              f"lines were removed from the end (truncated)")
        elif prev_seq == head_seq and prev_hash != head_hash:
            result.is_intact = False
            result.problem = f"the last line (seq {prev_seq}) was edited"
        elif prev_seq > head_seq + 1:
            result.is_intact = False
            result.problem = (f"the log goes on past seq {head_seq + 1}, but the last recorded line is seq "
                              f"{head_seq}: lines were appended by something else")
    elif prev_seq is not None:
        result.notes.append("no head file: a cut-off end cannot be detected")
    return result


def search(path: Path | str, *, text: str | None = None, fields: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Records containing ``text`` anywhere, and whose ``fields`` equal the given values (as text)."""
    for line in read_lines(path):
        if line.record is None:
            continue
        if text is not None and text.lower() not in line.raw.decode("utf-8", "replace").lower():
            continue
        if fields and any(str(line.record.get(key)) != value for key, value in fields.items()):
            continue
        yield line.record
