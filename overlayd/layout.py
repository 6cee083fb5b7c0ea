"""Where an overlay's parts live. Pure path arithmetic, no I/O.

    RUNTIME_DIR/NAME/overlay.json   the state record (written by store.StateStore only)
    RUNTIME_DIR/NAME/lower          the image, mounted read-only (read-write during Commit)
    RUNTIME_DIR/NAME/rw             the upper's file system (a tmpfs), source overlayd-NAME
    RUNTIME_DIR/NAME/rw/upper       overlayfs upperdir
    RUNTIME_DIR/NAME/rw/work        overlayfs workdir
    MOUNT_ROOT/NAME                 the default mount point of the merged view
    RUNTIME_DIR/.lowers/DEV-INO     an image mounted read-only once for all its overlays
                                    (".lowers" is no valid overlay name: it never clashes)
    RUNTIME_DIR/.lowers/DEV-INO-pOFFSET   the same for one partition of it (at byte OFFSET)
    RUNTIME_DIR/.zram-leftovers/zramN   a discarded overlay's zram device that another mount
                                    namespace still holds: its file system's UUID
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from overlayd.model import Lower

SOURCE_PREFIX = "overlayd-"
RECORD_NAME = "overlay.json"
TEMP_SUFFIX = ".tmp"  # what an atomic write leaves behind when it is killed
SHARED_LOWERS = ".lowers"  # RUNTIME_DIR/.lowers: starts with '.', so no overlay's name
# RUNTIME_DIR/.zram-leftovers/zramN: zram devices of discarded overlays that another mount
# namespace still holds (it copied the upper's mount), removed once it lets them go.
ZRAM_LEFTOVERS = ".zram-leftovers"


def runtime_dir_of(upper_mount: str) -> str:
    """RUNTIME_DIR of an overlay's upper mount (``Layout.upper_mount``: RUNTIME_DIR/NAME/rw)."""
    return os.path.dirname(os.path.dirname(upper_mount.rstrip("/")))


def mount_source(name: str) -> str:
    """The source string of every tmpfs and overlay overlayd mounts; how it knows its own."""
    return SOURCE_PREFIX + name


@dataclass(frozen=True)
class Layout:
    base: Path

    @classmethod
    def for_overlay(cls, runtime_dir: Path, name: str) -> Layout:
        return cls(runtime_dir / name)

    @property
    def record(self) -> Path:
        return self.base / RECORD_NAME

    @property
    def lower(self) -> Path:
        return self.base / "lower"

    @property
    def shared_lowers(self) -> Path:
        return self.base.parent / SHARED_LOWERS

    def shared_lower(self, dev: int, ino: int, offset: int = 0) -> Path:
        """Where the image (DEV, INO) is mounted for all of its overlays; a partition of
        it (at byte OFFSET) has a mount of its own for all of the overlays of that one."""
        return self.shared_lowers / (f"{dev}-{ino}" + (f"-p{offset}" if offset else ""))

    def lower_of(self, lower: Lower) -> Path:
        """Where LOWER is mounted: shared, or the overlay's own directory."""
        return self.shared_lower(lower.dev, lower.ino, lower.offset) if lower.shared \
            else self.lower

    @property
    def layer_mounts(self) -> Path:
        """Where the overlay's layer files are mounted, one directory each (issue 14)."""
        return self.base / "layers"

    def layer_mount(self, index: int) -> Path:
        """Where the layer INDEX (0: the lowest above the image) is mounted."""
        return self.layer_mounts / str(index)

    @property
    def upper_mount(self) -> Path:
        """Where the upper's own file system is mounted; upper/ and work/ live in it."""
        return self.base / "rw"

    @property
    def upper(self) -> Path:
        return self.base / "rw" / "upper"

    @property
    def work(self) -> Path:
        return self.base / "rw" / "work"


def is_within(path: str | Path, parent: str | Path) -> bool:
    """True if PATH is PARENT or below it (lexically; both absolute and normalized)."""
    p, q = str(path).rstrip("/") or "/", str(parent).rstrip("/") or "/"
    return p == q or p.startswith(q if q.endswith("/") else q + "/")


_PART_NAMES = {"lower": "image mount", "layers": "layer mounts", "rw": "upper",
               RECORD_NAME: "state record"}


def hide_internal_paths(text: str, runtime_dir: Path) -> str:
    """TEXT with every path inside the runtime directory (but the mount root's) told in
    words: replies never carry the daemon's own file names ("the upper of overlay 'x'")."""
    root = re.escape(str(runtime_dir).rstrip("/"))

    def words(m: re.Match[str]) -> str:
        name, part = m.group(1), m.group(2)
        if name == "mnt":
            return m.group(0)
        if name == SHARED_LOWERS:
            return "the shared image mount"
        what = _PART_NAMES.get(part.split("/")[0].rstrip("."), "files") if part else "directory"
        return f"the {what} of overlay '{name}'"

    return re.sub("'?" + root + r"/([^/'\s]+)(?:/([^'\s]*))?'?", words, text)
