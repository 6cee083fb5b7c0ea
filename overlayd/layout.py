"""Where an overlay's parts live. Pure path arithmetic, no I/O.

    RUNTIME_DIR/NAME/overlay.json   the state record
    RUNTIME_DIR/NAME/lower          the image, mounted read-only (read-write during Commit)
    RUNTIME_DIR/NAME/rw             the tmpfs that takes the writes, source overlayd-NAME
    RUNTIME_DIR/NAME/rw/upper       overlayfs upperdir
    RUNTIME_DIR/NAME/rw/work        overlayfs workdir
    MOUNT_ROOT/NAME                 the default mount point of the merged view
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SOURCE_PREFIX = "overlayd-"


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
        return self.base / "overlay.json"

    @property
    def lower(self) -> Path:
        return self.base / "lower"

    @property
    def tmpfs(self) -> Path:
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
