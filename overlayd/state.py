"""State records: one JSON file per overlay, so a restarted daemon knows what it owns.

Pure (de)serialization with versions; ``store.StateStore`` reads and writes the files.
A record of a newer version than this daemon knows is refused (``RecordTooNew``) and
left as it is: loading it would drop what this version does not understand. Version 1
records (overlayd 0.1, flat fields and stored paths) and version 2 records (no shared
lowers) are read and migrated.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from overlayd.model import RECORD_VERSION, Overlay


class RecordError(Exception):
    """A record that cannot be used; the message says why, for the log."""


class RecordTooNew(RecordError):
    pass


def dump_record(record: Overlay) -> bytes:
    return (record.model_dump_json(indent=2) + "\n").encode()


def load_record(data: bytes) -> Overlay:
    """The record in DATA, or RecordError saying what is wrong with it."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecordError("it is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise RecordError(f"it is not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise RecordError("it is not a JSON object")
    version = raw.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordError(f"its version {str(version)[:20]!r} is not a version")
    if version > RECORD_VERSION:
        raise RecordTooNew(f"it was written by a newer overlayd (record version {version}; "
                           f"this one knows up to {RECORD_VERSION})")
    if version == 1:
        raw = _from_v1(raw)
    elif version == 2:
        raw = _from_v2(raw)
    elif version == 3:
        raw = {**raw, "version": RECORD_VERSION}  # version 4 added layers (none then)
    try:
        return Overlay.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the record"
        raise RecordError(f"'{where}': {first['msg']}") from None


def _from_v2(v2: dict[str, Any]) -> dict[str, Any]:
    """Version 2 had no shared lowers: each overlay mounted its image in its own directory,
    which is what ``shared`` False (the default) says."""
    return {**v2, "version": RECORD_VERSION}


def _from_v1(v1: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept the image, tmpfs and mount in flat fields, and the derived paths."""
    try:
        return {
            "version": RECORD_VERSION, "name": v1["name"], "state": v1["state"],
            "lowers": [{"kind": v1["image_kind"], "image": v1["image"],
                        "dev": v1.get("image_dev", 0), "ino": v1.get("image_ino", 0),
                        "fstype": v1.get("fstype", ""),
                        "loop_device": v1.get("loop_device", "")}],
            "upper": {"kind": "tmpfs", "size": v1["size"]},
            "merged": {"mountpoint": v1["mountpoint"],
                       "created": v1.get("mountpoint_created", False),
                       "options": v1.get("mount_options", [])},
            "owner_uid": v1.get("owner_uid", 0), "created_usec": v1.get("created_usec", 0),
            "error": v1.get("error", ""),
        }
    except KeyError as e:
        raise RecordError(f"the version 1 record has no '{e.args[0]}'") from None
