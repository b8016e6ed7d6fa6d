"""Stored Responses-API responses (/v1/responses with ``store``), so ``previous_response_id`` can continue
a conversation and GET /v1/responses/{id} can show it again.

One JSON file per response under ``<store>/responses/``: the response object as returned, its input
items, and the whole conversation it ended (messages in Ollama's shape) for the next turn. Written
atomically (temp file + rename). Bounded: beyond ``MAX_STORED_RESPONSES`` the oldest files are removed,
as a local server must not grow without limit.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lokal.errors import BadRequest, NotFound

MAX_STORED_RESPONSES = 1000
_ID = re.compile(r"^resp_[A-Za-z0-9]{1,64}$")


@dataclass
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    messages: list[dict[str, Any]]  # the conversation including this response's output


class ResponseStore:
    def __init__(self, root: Path, max_responses: int = MAX_STORED_RESPONSES):
        self.root = Path(root) / "responses"
        self.max_responses = max_responses

    def _path(self, response_id: str) -> Path:
        if not _ID.match(response_id):
            raise NotFound(f"response {response_id!r} not found")
        return self.root / f"{response_id}.json"

    def save(self, stored: StoredResponse) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(stored.response["id"])
        data = json.dumps({"response": stored.response, "input_items": stored.input_items,
                           "messages": stored.messages}, ensure_ascii=False)
        handle, temp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(data)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        self._prune()

    def get(self, response_id: str) -> StoredResponse:
        path = self._path(response_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound(f"response {response_id!r} not found") from None
        except (OSError, ValueError) as exc:
            raise BadRequest(f"stored response {response_id!r} is unreadable: {exc}") from None
        return StoredResponse(data["response"], data["input_items"], data["messages"])

    def delete(self, response_id: str) -> None:
        path = self._path(response_id)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"response {response_id!r} not found") from None

    def _prune(self) -> None:
        files = sorted(self.root.glob("resp_*.json"), key=lambda p: p.stat().st_mtime)
        for path in files[: max(0, len(files) - self.max_responses)]:
            path.unlink(missing_ok=True)
