"""State records: one JSON file per overlay, so a restarted daemon knows what it owns.

Pure (de)serialization; the host writes the files (atomically: temp file + rename).
"""

from __future__ import annotations

from pydantic import ValidationError

from overlayd.model import Overlay


def dump_record(record: Overlay) -> str:
    return record.model_dump_json(indent=2) + "\n"


def load_record(text: str) -> Overlay | None:
    """The record, or None when the file is damaged (a half-written file never has a name
    of its own, so this means someone else wrote it)."""
    try:
        return Overlay.model_validate_json(text)
    except ValidationError:
        return None
