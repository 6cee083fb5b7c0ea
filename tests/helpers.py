"""Helpers for tests: images, snapshots of trees, and leak inspection."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overlayd.host import loop
from overlayd.host.mounttable import read_mounts


def sh(*cmd: str | os.PathLike[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True, **kw)


def make_image(path: Path, tree: Path | None = None, *, size: str = "64M",
               fstype: str = "ext4") -> Path:
    """An image file holding FSTYPE, filled from TREE when given."""
    if fstype == "squashfs":
        sh("mksquashfs", tree or path.parent, path, "-quiet", "-noappend", "-no-progress")
        return path
    if fstype == "erofs":
        sh("mkfs.erofs", "--quiet", path, tree or path.parent)
        return path
    sh("truncate", "-s", size, path)
    if fstype.startswith("ext"):
        args = ["-q", "-F", "-b", "4096"] + (["-d", str(tree)] if tree else [])
        sh(f"mkfs.{fstype}", *args, path)
    elif fstype == "xfs":
        sh("mkfs.xfs", "-q", "-f", path)
    elif fstype == "btrfs":
        sh("mkfs.btrfs", "-q", "-f", path)
    else:
        raise ValueError(fstype)
    return path


def traversable(path: Path) -> None:
    """Let other users reach PATH: pytest makes its temporary tree 0700 (root only)."""
    for p in [path, *path.parents]:
        if p == Path("/tmp"):
            break
        p.chmod(p.stat().st_mode | 0o111)


def sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def attached_loops() -> dict[str, str]:
    """Loop device -> backing file, for every attached loop device."""
    return loop.attached()


def mounts_under(path: str) -> list[str]:
    p = path.rstrip("/") + "/"
    return [f"{m.target} ({m.fstype} from {m.source})" for m in read_mounts()
            if m.target.startswith(p)]


def force_cleanup(path: str) -> None:
    """Only for a test that already failed: detach what it left under its own root."""
    p = path.rstrip("/") + "/"
    for m in reversed(read_mounts()):
        if m.target.startswith(p):
            subprocess.run(["umount", "-l", m.target], check=False)


def snapshot(root: str | Path, *, unescape: bool = False) -> dict[str, Any]:
    """Everything a user can see of a tree: types, content, owners, modes, mtimes, xattrs,
    symlink targets, device numbers, and which names share an inode (hard links)."""
    root = str(root)
    entries: dict[str, Any] = {}
    inodes: dict[tuple[int, int], list[str]] = {}

    def one(path: str, rel: str) -> None:
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        e: dict[str, Any] = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
                             "mtime": st.st_mtime_ns}
        if stat.S_ISREG(kind):
            e["size"] = st.st_size
            e["sha"] = sha256(path)
        elif stat.S_ISLNK(kind):
            e["link"] = os.readlink(path)
        elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
            e["rdev"] = st.st_rdev
        xattrs = {}
        for name in os.listxattr(path, follow_symlinks=False):
            value = os.getxattr(path, name, follow_symlinks=False)
            if unescape and name.startswith("trusted.overlay."):
                assert name.startswith("trusted.overlay.overlay."), \
                    f"internal xattr {name} reached the image at {rel}"
                name = "trusted.overlay." + name[len("trusted.overlay.overlay."):]
            xattrs[name] = value
        e["xattrs"] = xattrs
        entries[rel] = e
        if not stat.S_ISDIR(kind):
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)

    one(root, ".")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            one(p, os.path.relpath(p, root))
    entries["<hardlinks>"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return entries


def diff_snapshots(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)!r} != {b.get(k)!r}")
    return out


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "a condition") -> None:
    """Poll COND until it holds; a generous TIMEOUT only detects a hang."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def ext4_has_journal(device: str) -> bool:
    """Whether the ext4 on DEVICE has a journal (s_feature_compat & HAS_JOURNAL)."""
    with open(device, "rb") as f:
        f.seek(1024 + 0x5C)
        return bool(int.from_bytes(f.read(4), "little") & 0x4)
