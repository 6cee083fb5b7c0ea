"""The root file system on an overlay (``overlayd.root=tmpfs``), as the initramfs left it.

The initramfs (packaging/root/lib.sh, run by the initramfs-tools script or the dracut
hook) mounts the real root read-only at STATE/lower, a size-limited tmpfs at LAYERS
(below /run/initramfs, which systemd leaves mounted until its exitrd runs) and the
overlay at /, both with source ``overlayd-root``, and writes small state files in STATE.
The daemon adopts it as the overlay ``root``; a commit is only ever *requested* here (the
file STATE/commit), and the exitrd does it once / is unmounted. The next boot's setting
goes to /etc/overlayd/root.overlay directly when the root is not protected, and through
STATE/next-setting (written into the real root by the exitrd) when it is: written into
the overlay, it would be thrown away with the rest.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from overlayd.host.errors import Op, map_os_errors
from overlayd.host.mounttable import mount_at
from overlayd.layout import Layout, mount_source

ROOT_NAME = "root"
STATE_DIR = Path("/run/overlayd-root")
LAYERS_DIR = Path("/run/initramfs/overlayd-root")
SETTING = Path("/etc/overlayd/root.overlay")
SIZE_RE = re.compile(r"[0-9]+[kKmMgG%]?\Z")


@dataclass(frozen=True)
class RootLayout(Layout):
    """Where the root overlay's parts are: the lower in STATE, the upper's tmpfs in
    LAYERS (not in the runtime directory, as other overlays' are)."""

    layers: Path = LAYERS_DIR

    @property
    def upper_mount(self) -> Path:
        return self.layers

    @property
    def upper(self) -> Path:
        return self.layers / "upper"

    @property
    def work(self) -> Path:
        return self.layers / "work"


@dataclass(frozen=True)
class RootInfo:
    """The root overlay the initramfs made."""

    device: str  # the real root's block device, mounted read-only
    fstype: str
    upper: str  # "tmpfs"
    size: int  # the tmpfs' limit in bytes
    size_setting: str  # as asked for: "50%", "512M"
    source: str  # where the setting came from
    last_failure: str  # the report of a commit at the last shutdown that failed, or ""
    created_usec: int  # when the initramfs made it


def _tmpfs_size(text: str | None) -> int:
    """tmpfs' size option ('524288k') in bytes; 0 if absent."""
    if not text:
        return 0
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    factor = units.get(text[-1].lower(), 1)
    digits = text[:-1] if text[-1].lower() in units else text
    return int(digits) * factor if digits.isdigit() else 0


class RootFs:
    """The root overlay's files and mounts. The paths are parameters for the tests, which
    lay a root out under a temporary directory, mounted somewhere other than /."""

    def __init__(self, state_dir: Path = STATE_DIR, layers_dir: Path = LAYERS_DIR,
                 mountpoint: str = "/", setting: Path = SETTING) -> None:
        self.state_dir = state_dir
        self.layers_dir = layers_dir
        self.mountpoint = mountpoint
        self.setting = setting

    @property
    def layout(self) -> RootLayout:
        return RootLayout(self.state_dir, self.layers_dir)

    def _state(self, name: str) -> str:
        try:
            return (self.state_dir / name).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return ""

    def read(self) -> RootInfo | None:
        """The root overlay, if the initramfs made one and it is still mounted as it left
        it (the overlay and the tmpfs with source overlayd-root, the lower read-only)."""
        with map_os_errors("read the state of the root overlay", Op.FILE):
            upper = self._state("mode")
            if not upper:
                return None
            source = mount_source(ROOT_NAME)
            merged = mount_at(self.mountpoint)
            tmpfs = mount_at(str(self.layers_dir))
            lower = mount_at(str(self.state_dir / "lower"))
            if merged is None or merged.fstype != "overlay" or merged.source != source or \
                    merged.super_option("upperdir") != str(self.layout.upper):
                return None
            if tmpfs is None or tmpfs.fstype != "tmpfs" or tmpfs.source != source:
                return None
            if lower is None or "ro" not in lower.options:
                return None
            return RootInfo(device=self._state("lowerdev") or lower.source,
                            fstype=self._state("fstype") or lower.fstype, upper=upper,
                            size=_tmpfs_size(tmpfs.super_option("size")),
                            size_setting=self._state("size"), source=self._state("source"),
                            last_failure=self._state("last-commit-failed"),
                            created_usec=(self.state_dir / "mode").stat().st_mtime_ns // 1000)

    def commit_requested(self) -> bool:
        return (self.state_dir / "commit").exists()

    def request_commit(self, on: bool) -> None:
        """Ask the exitrd to commit at shutdown (ON), or no longer."""
        path = self.state_dir / "commit"
        with map_os_errors("record the commit at shutdown", Op.FILE):
            if on:
                path.write_text("requested\n")
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def set_next_boot(self, text: str, *, protected: bool) -> str:
        """Make TEXT the root.overlay of the next boot; returns where it went."""
        target = self.state_dir / "next-setting" if protected else self.setting
        with map_os_errors(f"write '{target}'", Op.FILE):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        return str(target)
