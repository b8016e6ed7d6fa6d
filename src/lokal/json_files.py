"""Optional JSON files of a model folder (a tokenizer's or a converter's config), read leniently: a file
that is missing, unreadable or of the wrong shape reads as empty, and the caller falls back to defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_json_object(path: Path) -> dict[str, Any]:
    """The file's JSON object, or {}."""
    data = _read(path)
    return data if isinstance(data, dict) else {}


def read_json_objects(path: Path) -> list[dict[str, Any]]:
    """The objects of the file's JSON array (other items skipped), or []."""
    data = _read(path)
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
