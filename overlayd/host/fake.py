"""FakeHost: the Host protocol in memory, for pure-logic tests and fault injection.

It models directories, files, loop devices and a mount table closely enough for the
engine's bookkeeping (what is mounted where, by whom, in what order) and lets a test
make any method fail: ``FakeHost(fail={"mount_overlay": MountFailed("boom")})``.
``fail_nth={("mount_overlay", 2): err}`` fails only the second call of that method.
It never touches the real system; tests that show a feature works use LinuxHost.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from overlayd.errors import InvalidSpec, MountFailed, OverlayBusy, OverlaydError
from overlayd.host.base import Applied, ImageInfo, Progress
from overlayd.host.mountinfo import MountInfo
from overlayd.model import LowerKind, UpperUsage


@dataclass
class FakeLoop:
    path: str
    host: FakeHost

    def release(self) -> None:
        self.host.loop_fds.discard(self.path)
        self.host._autoclear()


@dataclass
class FakeHost:
    fail: dict[str, OverlaydError] = field(default_factory=dict)
    fail_nth: dict[tuple[str, int], OverlaydError] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # path -> fstype ("" = no signature)
    dirs: set[str] = field(default_factory=lambda: {"/", "/run", "/srv", "/mnt"})
    files: dict[str, str] = field(default_factory=dict)
    mount_table: list[MountInfo] = field(default_factory=list)
    loops: dict[str, str] = field(default_factory=dict)  # device -> backing file
    loop_fds: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)  # mount targets that refuse a plain unmount
    calls: list[str] = field(default_factory=list)
    open_fds: int = 0
    _next_id: int = 100

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]
        nth = (name, self.calls.count(name))
        if nth in self.fail_nth:
            raise self.fail_nth[nth]

    def _autoclear(self) -> None:
        used = {m.source for m in self.mount_table} | self.loop_fds
        for dev in [d for d in self.loops if d not in used]:
            del self.loops[dev]

    def memory_total(self) -> int:
        return 8 << 30

    def kernel_filesystems(self) -> frozenset[str]:
        return frozenset({"ext4", "squashfs", "erofs", "xfs", "btrfs", "tmpfs", "overlay"})

    def open_image(self, path: str | None, fd: int | None, *, as_uid: int = 0) -> ImageInfo:
        self._call("open_image")
        if path is None or (path not in self.images and path not in self.dirs):
            raise InvalidSpec(f"The image '{path}' does not exist.", "image")
        self.open_fds += 1
        if path in self.dirs:
            return ImageInfo(path, LowerKind.DIRECTORY, 1, 2, 0, None, -1)
        return ImageInfo(path, LowerKind.FILE, 1, 3, 1 << 20, self.images[path] or None, 3)

    def fd_path(self, fd: int) -> str:
        return f"fd {fd}"

    def user_name(self, uid: int) -> str:
        return {0: "root", 65534: "nobody"}.get(uid, str(uid))

    def reopen_image(self, image: str, dev: int, ino: int, *, writable: bool,
                     as_uid: int = 0) -> ImageInfo:
        self._call("reopen_image")
        self.open_fds += 1
        return ImageInfo(image, LowerKind.FILE, dev, ino, 1 << 20, None, 3)

    def open_lower_dir(self, path: str, dev: int, ino: int) -> int:
        self._call("open_lower_dir")
        self.open_fds += 1
        return 7

    def close_fd(self, fd: int) -> None:
        self.open_fds -= 1

    def close_image(self, info: ImageInfo) -> None:
        if info.fd >= 0:
            self.open_fds -= 1
            info.fd = -1

    def attach_loop(self, info: ImageInfo, *, read_only: bool, name: str) -> FakeLoop:
        self._call("attach_loop")
        dev = f"/dev/loop{len(self.loops) + len(self.loop_fds)}"
        while dev in self.loops:
            dev += "0"
        self.loops[dev] = info.path
        self.loop_fds.add(dev)
        return FakeLoop(dev, self)

    def loop_backing(self, device: str) -> str | None:
        return self.loops.get(device)

    def _mount(self, call: str, source: str, target: str, fstype: str,
               options: tuple[str, ...] = ()) -> None:
        self._call(call)
        if target not in self.dirs:
            raise MountFailed(f"Cannot mount at '{target}': no such directory.")
        self._next_id += 1
        self.mount_table.append(MountInfo(self._next_id, 1, "0:0", "/", target, options or ("rw",),
                                          fstype, source, ("rw",)))

    def mount_fs(self, source: str, target: str, fstype: str, *, read_only: bool) -> None:
        self._mount("mount_fs", source, target, fstype, ("ro",) if read_only else ("rw",))

    def mount_tmpfs(self, source: str, target: str, size: int) -> None:
        self._mount("mount_tmpfs", source, target, "tmpfs")

    def open_mountpoint(self, path: str, *, follow_symlinks: bool) -> tuple[int, str]:
        path = os.path.normpath(path)
        if path not in self.dirs:
            raise InvalidSpec(f"The mount point '{path}' does not exist.", "mountpoint")
        self.open_fds += 1
        return 9, path

    def mount_overlay(self, source: str, target: str, *, lower: str, upper: str, work: str,
                      options: tuple[str, ...], target_fd: int | None = None) -> None:
        self._mount("mount_overlay", source, target, "overlay", options)

    def detach_for_later(self, target: str, owned: Callable[[MountInfo], bool], *,
                         mounts: list[MountInfo] | None = None) -> Callable[[], None]:
        self.unmount(target, owned, lazy=True)
        return lambda: None

    def unmount(self, target: str, owned: Callable[[MountInfo], bool], *,
                lazy: bool = False, mounts: list[MountInfo] | None = None) -> bool:
        self._call("unmount")
        top = [m for m in self.mount_table if m.target == target]
        if not top:
            return False
        if not owned(top[-1]):
            raise MountFailed(f"Refusing to unmount '{target}'.")
        if target in self.busy and not lazy:
            raise OverlayBusy(f"'{target}' is busy.", [(42, "sleep")])
        self.mount_table.remove(top[-1])
        self._autoclear()
        return True

    def mounts(self) -> list[MountInfo]:
        return list(self.mount_table)

    def holders(self, target: str) -> list[tuple[int, str]]:
        return [(42, "sleep")] if target in self.busy else []

    def path_kind(self, path: str) -> str:
        if path in self.dirs:
            return "directory"
        return "other" if path in self.files or path in self.images else "missing"

    def list_dir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/")[0] for p in self.dirs | set(self.files)
                 if p.startswith(prefix)}
        return sorted(names)

    def read_file(self, path: str) -> str | None:
        return self.files.get(path)

    def write_file(self, path: str, text: str) -> None:
        self._call("write_file")
        if os.path.dirname(path) not in self.dirs:
            raise MountFailed(f"Cannot write '{path}': no such directory.")
        self.files[path] = text

    def make_dir(self, path: str, mode: int = 0o755) -> None:
        self._call("make_dir")
        if os.path.dirname(path) not in self.dirs or path in self.dirs:
            raise MountFailed(f"Cannot create the directory '{path}'.")
        self.dirs.add(path)

    def remove_dir(self, path: str) -> None:
        prefix = path + "/"
        if any(p.startswith(prefix) for p in self.dirs | set(self.files)):
            raise MountFailed(f"Cannot remove '{path}': not empty.")
        if any(m.target == path for m in self.mount_table):
            raise MountFailed(f"Cannot remove '{path}': busy.")
        self.dirs.discard(path)

    def remove_file(self, path: str) -> None:
        self.files.pop(path, None)

    def prepare_upper(self, lower_root: str, upper: str, work: str) -> None:
        self._call("prepare_upper")

    def apply_upper(self, upper: str, lower: str, progress: Progress | None) -> Applied:
        self._call("apply_upper")
        return Applied(0, 0, 0.0)

    def diff(self, upper: str, lower: str) -> list[tuple[str, str]]:
        return []

    def usage(self, path: str) -> UpperUsage:
        return UpperUsage(size=1 << 20, used=0, inodes_used=1)

    def syncfs(self, path: str) -> None:
        self._call("syncfs")
