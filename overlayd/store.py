"""StateStore: the one reader and writer of state records, RUNTIME_DIR/NAME/overlay.json.

Only the manager holds one. Writes are atomic (a temporary and a rename); a kill between
the two leaves the temporary, which ``remove`` and ``sweep`` take away, so it never wedges
a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from overlayd.errors import OverlaydError
from overlayd.host.ports import StateFiles
from overlayd.layout import SHARED_LOWERS, TEMP_SUFFIX, ZRAM_LEFTOVERS, Layout, is_within
from overlayd.model import Overlay
from overlayd.state import RecordError, RecordTooNew, dump_record, load_record


@dataclass(frozen=True)
class Unreadable:
    """A record that is there but cannot be used; REASON says why, for the log."""

    reason: str
    too_new: bool = False  # written by a newer overlayd: leave everything as it is


class StateStore:
    def __init__(self, files: StateFiles, runtime_dir: Path, mount_root: Path) -> None:
        self.files = files
        self.runtime_dir = runtime_dir
        self.mount_root = mount_root

    def layout(self, name: str) -> Layout:
        return Layout.for_overlay(self.runtime_dir, name)

    def ensure_root(self) -> None:
        root = str(self.runtime_dir)
        if self.files.path_kind(root) == "missing":
            self.files.make_dir(root, 0o755)

    def names(self) -> list[str]:
        """Every per-overlay directory (not the mount root's)."""
        out = []
        for name in self.files.list_dir(str(self.runtime_dir)):
            base = str(self.runtime_dir / name)
            if name in (SHARED_LOWERS, ZRAM_LEFTOVERS) or is_within(self.mount_root, base) or \
                    self.files.path_kind(base) != "directory":
                continue
            out.append(name)
        return out

    def begin(self, rec: Overlay) -> None:
        """The overlay's directory and its first record, before anything is mounted."""
        layout = self.layout(rec.name)
        if self.files.path_kind(str(layout.base)) != "missing":
            raise OverlaydError(f"Leftovers of an earlier overlay '{rec.name}' are in "
                                f"'{layout.base}'; restart overlayd to clean them up.")
        self.files.make_dir(str(layout.base), 0o700)
        try:
            self.save(rec)
        except OverlaydError:
            self.sweep(rec.name)
            self.files.remove_dir(str(layout.base))
            raise

    def save(self, rec: Overlay) -> None:
        self.files.write_file(str(self.layout(rec.name).record), dump_record(rec))

    def load(self, name: str) -> Overlay | Unreadable | None:
        """The record of NAME; None when there is none; Unreadable when it can't be used."""
        path = str(self.layout(name).record)
        try:
            data = self.files.read_file(path)
        except OverlaydError as e:  # a directory in its place, an I/O error
            return Unreadable(str(e))
        if data is None:
            return None
        try:
            rec = load_record(data)
        except RecordTooNew as e:
            return Unreadable(str(e), too_new=True)
        except RecordError as e:
            return Unreadable(str(e))
        if rec.name != name:
            return Unreadable(f"it names another overlay ('{rec.name[:64]}')")
        return rec

    def sweep(self, name: str) -> None:
        """Remove the temporary a killed write left."""
        self.files.remove_file(str(self.layout(name).record) + TEMP_SUFFIX)

    def remove(self, name: str) -> None:
        """The record, its temporary and the overlay's directory (which must be empty of
        anything else by now)."""
        layout = self.layout(name)
        self.files.remove_file(str(layout.record))
        self.sweep(name)
        self.files.remove_dir(str(layout.base))
