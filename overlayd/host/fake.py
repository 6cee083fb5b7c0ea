"""FakeHost: every port in memory, for pure-logic tests and fault injection.

It models directories, files, loop devices, a mount table and what the upper and the
image hold, closely enough for the engine's bookkeeping (what is mounted where, by whom,
in what order, and where each write is) and lets a test make any call fail:
``FakeHost(fail={"mount_overlay": MountFailed("boom")})``; ``fail_nth={("mount_overlay",
2): err}`` fails only the second call of that method; ``crash_at=N`` stops the world at
the Nth call, as a kill -9 would (that call and every later one raise ``Crashed`` and
change nothing), after which ``restarted()`` is the same machine for a new daemon.
It never touches the real system; tests that show a feature works use LinuxHost.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from overlayd.errors import Cancelled, InvalidSpec, MountFailed, OverlayBusy, OverlaydError
from overlayd.host.ports import Applied, ImageInfo, Owned, Progress
from overlayd.layout import TEMP_SUFFIX, mount_source
from overlayd.model import LowerKind, MergeEngine, Upper, UpperKind, UpperUsage
from overlayd.mountinfo import MountInfo


class Crashed(BaseException):  # a kill, not an error: no "except Exception" stops it
    """The simulated kill -9: nothing after it happens."""


@dataclass
class FakeLoop:
    path: str
    host: FakeHost

    def release(self) -> None:
        self.host.loop_fds.discard(self.path)
        self.host._autoclear()


class FakeWatch:
    """A mount watch whose events a test makes (``changed()``), through a real pipe so the
    event loop wakes up as it would for the kernel's."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()

    def changed(self) -> None:
        os.write(self._w, b"x")

    def fileno(self) -> int:
        return self._r

    def drain(self) -> bool:
        os.set_blocking(self._r, False)
        try:
            return bool(os.read(self._r, 4096))
        except BlockingIOError:
            return False

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class FakeHost:
    fail: dict[str, OverlaydError] = field(default_factory=dict)
    fail_nth: dict[tuple[str, int], OverlaydError] = field(default_factory=dict)
    crash_at: int | None = None  # the Nth call (1-based) is where the daemon dies
    image_fstypes: dict[str, str] = field(default_factory=dict)  # path -> "" = no signature
    dirs: set[str] = field(default_factory=lambda: {"/", "/run", "/srv", "/mnt"})
    file_data: dict[str, bytes] = field(default_factory=dict)
    mount_table: list[MountInfo] = field(default_factory=list)
    loops: dict[str, str] = field(default_factory=dict)  # device -> backing file
    loop_fds: set[str] = field(default_factory=set)
    loop_windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    # path -> {partition asked: (offset, size, fstype)}: what Images.partition finds
    image_partitions: dict[str, dict[int | str, tuple[int, int, str]]] = field(
        default_factory=dict)
    busy: set[str] = field(default_factory=set)  # mount targets that refuse a plain unmount
    calls: list[str] = field(default_factory=list)
    open_fds: int = 0
    # What the writes are: names in each tmpfs (by mount id) and in each image.
    upper_data: dict[int, set[str]] = field(default_factory=dict)
    image_data: dict[str, set[str]] = field(default_factory=dict)
    dead: bool = False
    detached_fds: set[str] = field(default_factory=set)  # sources of detached mounts
    # Users of the image outside overlayd (what Images.users reports), and locks.
    outside_users: list[str] = field(default_factory=list)
    locked: set[tuple[int, int]] = field(default_factory=set)
    write_locked: set[tuple[int, int]] = field(default_factory=set)
    _next_id: int = 100
    _layer_inos: dict[str, int] = field(default_factory=dict)  # layer files: stable inodes
    watcher: FakeWatch | None = None
    space: dict[str, tuple[int, int]] = field(default_factory=dict)  # fs_space, by path
    # zram uppers: each device and the UUID of the file system on it ("" before mkfs);
    # those another mount namespace holds (hot_remove is EBUSY); the leftovers noted.
    zram: dict[str, str] = field(default_factory=dict)
    zram_held: set[str] = field(default_factory=set)
    zram_leftovers: dict[str, str] = field(default_factory=dict)
    _uuids: int = 0
    # FUSE servers that died (by overlay name): reap_dead reports them, drops their mount
    dead_servers: set[str] = field(default_factory=set)

    kind = UpperKind.TMPFS  # as an UpperBackend

    # The ports: one object plays them all.
    @property
    def system(self) -> FakeHost:
        return self

    images = system
    locks = system
    mounts = system
    files = system
    layers = system
    layerfiles = system
    upper = system
    merge = system

    def _call(self, name: str, *, can_fail: bool = True) -> None:
        if self.dead:
            raise Crashed(name)
        self.calls.append(name)
        if self.crash_at is not None and len(self.calls) >= self.crash_at:
            self.dead = True
            raise Crashed(name)
        if not can_fail:
            return
        if name in self.fail:
            raise self.fail[name]
        nth = (name, self.calls.count(name))
        if nth in self.fail_nth:
            raise self.fail_nth[nth]

    def restarted(self) -> FakeHost:
        """The machine after the daemon died: same mounts and files, no fds, no faults."""
        self.dead, self.crash_at, self.calls = False, None, []
        self.fail, self.fail_nth = {}, {}
        self.loop_fds.clear()
        self.detached_fds.clear()
        self.locked.clear()  # a dead process holds no lock
        self.write_locked.clear()
        self.open_fds = 0
        self._autoclear()
        return self

    def _autoclear(self) -> None:
        used = {m.source for m in self.mount_table} | self.loop_fds | self.detached_fds
        for dev in [d for d in self.loops if d not in used]:
            del self.loops[dev]

    # -- System -------------------------------------------------------------------------

    def memory_total(self) -> int:
        return 8 << 30

    def kernel_filesystems(self) -> frozenset[str]:
        return frozenset({"ext4", "squashfs", "erofs", "xfs", "btrfs", "tmpfs", "overlay"})

    def user_name(self, uid: int) -> str:
        return {0: "root", 65534: "nobody"}.get(uid, str(uid))

    def fs_space(self, path: str) -> tuple[int, int]:
        return self.space.get(path, (1 << 30, 256 << 20))

    # -- Images -------------------------------------------------------------------------

    def open_image(self, path: str | None, fd: int | None, *, as_uid: int = 0) -> ImageInfo:
        self._call("open_image")
        if path is None or (path not in self.image_fstypes and path not in self.dirs):
            raise InvalidSpec(f"The image '{path}' does not exist.", "image")
        self.open_fds += 1
        if path in self.dirs:
            return ImageInfo(path, LowerKind.DIRECTORY, 1, 2, 0, None, -1)
        ino = self._layer_inos.setdefault(path, 1000 + len(self._layer_inos)) \
            if path in self.file_data else 3 + sorted(self.image_fstypes).index(path)
        return ImageInfo(path, LowerKind.FILE, 1, ino, 1 << 20,
                         self.image_fstypes[path] or None, 3)

    def fd_path(self, fd: int) -> str:
        return f"fd {fd}"

    def reopen_image(self, image: str, dev: int, ino: int, *, writable: bool,
                     as_uid: int = 0) -> ImageInfo:
        self._call("reopen_image")
        self.open_fds += 1
        # As large as its partitions reach: a commit refuses an image cut short before.
        size = max([1 << 20, *(o + n for o, n, _ in self.image_partitions.get(image, {})
                                .values())])
        return ImageInfo(image, LowerKind.FILE, dev, ino, size, None, 3)

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

    def attach_loop(self, info: ImageInfo, *, read_only: bool, name: str, offset: int = 0,
                    sizelimit: int = 0) -> FakeLoop:
        self._call("attach_loop")
        n = 0
        while f"/dev/loop{n}" in self.loops:
            n += 1
        dev = f"/dev/loop{n}"
        self.loops[dev] = info.path
        self.loop_windows[dev] = (offset, sizelimit)
        self.loop_fds.add(dev)
        return FakeLoop(dev, self)

    def loop_backing(self, device: str) -> str | None:
        self._call("loop_backing")
        return self.loops.get(device)

    def loop_window(self, device: str) -> tuple[int, int] | None:
        return self.loop_windows.get(device, (0, 0)) if device in self.loops else None

    def partition(self, info: ImageInfo, want: int | str, shown: str) -> ImageInfo:
        """IMAGE_PARTITIONS[path][want] = (offset, size, fstype)."""
        self._call("partition")
        found = self.image_partitions.get(info.path, {}).get(want)
        if found is None:
            raise InvalidSpec(f"The image '{shown}' has no partition {want}.", "partition")
        offset, size, fstype = found
        return ImageInfo(info.path, info.kind, info.dev, info.ino, size, fstype, info.fd,
                         offset, size, want)

    def users(self, image: str, dev: int, ino: int, *, own_devices: set[str],
              own_mounts: set[str], writers_only: bool = False,
              window: tuple[int, int] = (0, 0)) -> list[str]:
        self._call("users")
        return list(self.outside_users)

    # -- ImageLocks ---------------------------------------------------------------------

    def hold(self, path: str, dev: int, ino: int, fd: int | None = None) -> None:
        self._call("hold")
        self.locked.add((dev, ino))

    def release(self, dev: int, ino: int) -> None:
        self.locked.discard((dev, ino))
        self.write_locked.discard((dev, ino))

    def lock_write(self, path: str, dev: int, ino: int) -> None:
        self._call("lock_write")
        self.write_locked.add((dev, ino))

    def unlock_write(self, dev: int, ino: int) -> None:
        self.write_locked.discard((dev, ino))

    # -- Mounts -------------------------------------------------------------------------

    def _mount(self, call: str, source: str, target: str, fstype: str,
               options: tuple[str, ...] = (), super_options: tuple[str, ...] = ("rw",)) -> None:
        self._call(call)
        if target not in self.dirs:
            raise MountFailed(f"Cannot mount at '{target}': no such directory.")
        self._next_id += 1
        self.mount_table.append(MountInfo(self._next_id, 1, "0:0", "/", target,
                                          options or ("rw",), fstype, source, super_options))

    def mount_fs(self, source: str, target: str, fstype: str, *, read_only: bool) -> None:
        self._mount("mount_fs", source, target, fstype, ("ro",) if read_only else ("rw",))

    def open_detached(self, source: str, fstype: str) -> int:
        self._call("open_detached")
        self.detached_fds.add(source)  # the detached mount holds the device
        self.open_fds += 1
        return 11

    def close_detached(self, fd: int) -> None:
        self._call("close_detached")
        self.open_fds -= 1
        self.detached_fds.clear()
        self._autoclear()

    def open_mountpoint(self, path: str, *, follow_symlinks: bool) -> tuple[int, str]:
        self._call("open_mountpoint")
        path = os.path.normpath(path)
        if path not in self.dirs:
            raise InvalidSpec(f"The mount point '{path}' does not exist.", "mountpoint")
        self.open_fds += 1
        return 9, path

    def unmount(self, target: str, owned: Owned, *, lazy: bool = False) -> bool:
        self._call("unmount")
        top = [m for m in self.mount_table if m.target == target]
        if not top:
            return False
        if not owned(top[-1]):
            raise MountFailed(f"Refusing to unmount '{target}'.")
        if target in self.busy and not lazy:
            raise OverlayBusy(f"'{target}' is busy.", [(42, "sleep")])
        self.mount_table.remove(top[-1])
        if self.upper_data.pop(top[-1].mount_id, None) is not None:
            self.remove_tree(target, keep_top=True)  # upper/ and work/ were in the tmpfs
        self._autoclear()
        return True

    def at(self, path: str) -> MountInfo | None:
        self._call("at")
        found = [m for m in self.mount_table if m.target == path]
        return found[-1] if found else None

    def at_each(self, paths: list[str]) -> dict[str, MountInfo | None]:
        self._call("at_each")
        tops = {m.target: m for m in self.mount_table}
        return {p: tops.get(p) for p in paths}

    def watch(self) -> FakeWatch:
        self.watcher = FakeWatch()
        return self.watcher

    def containing(self, path: str) -> list[MountInfo]:
        self._call("containing")
        return [m for m in reversed(self.mount_table)
                if path == m.target or path.startswith(m.target.rstrip("/") + "/")]

    def table(self) -> list[MountInfo]:
        self._call("table")
        return list(self.mount_table)

    def holders(self, target: str) -> list[tuple[int, str]]:
        return [(42, "sleep")] if target in self.busy else []

    def syncfs(self, path: str) -> None:
        self._call("syncfs")

    # -- UpperBackend and MergeMount ------------------------------------------------------

    def owns(self, name: str, upper: Upper | None = None) -> Owned:
        if upper is not None and upper.kind is UpperKind.ZRAM:  # as ZramUpper.owns
            return lambda m: m.fstype == "ext4" and m.source in self.zram and (
                m.source == upper.device if upper.device
                else bool(upper.fs_uuid) and self.zram[m.source] == upper.fs_uuid)
        src = mount_source(name)
        return lambda m: m.source == src

    def plan(self, upper: Upper) -> Upper:
        if upper.kind is UpperKind.ZRAM:
            self._uuids += 1
            return upper.model_copy(update={"fs_uuid": f"uuid-{self._uuids}"})
        return upper

    def make(self, name: str, target: str, upper: Upper) -> Upper:
        if upper.kind is UpperKind.ZRAM:
            return self._make_zram(target, upper)
        self._mount("mount_tmpfs", mount_source(name), target, "tmpfs",
                    super_options=("rw", f"size={upper.size // 1024}k"))
        self.upper_data[self._next_id] = set()
        return upper

    def _make_zram(self, target: str, upper: Upper) -> Upper:
        """As ZramUpper.make, step by step: the recorded device formatted again, or a new
        one hot-added, noted in TARGET.zram, formatted and mounted (removed again if a
        step fails; a kill leaves what was done)."""
        dev = upper.device
        if dev and self.zram.get(dev) == upper.fs_uuid and \
                not any(m.source == dev for m in self.mount_table):
            self._call("zram_mkfs")
            self._mount("mount_zram", dev, target, "ext4")
            self.upper_data[self._next_id] = set()
            return upper
        self.collect(os.path.dirname(os.path.dirname(target)))
        self._call("zram_hot_add")
        n = 0
        while f"/dev/zram{n}" in self.zram:
            n += 1
        dev = f"/dev/zram{n}"
        self.zram[dev] = ""
        try:
            self._call("zram_note")
            self.file_data[target + ".zram"] = f"zram{n} {upper.fs_uuid}\n".encode()
            self._call("zram_mkfs")
            self.zram[dev] = upper.fs_uuid
            self._mount("mount_zram", dev, target, "ext4")
            self.upper_data[self._next_id] = set()
        except OverlaydError:
            del self.zram[dev]
            self.file_data.pop(target + ".zram", None)
            raise
        return upper.model_copy(update={"device": dev})

    def unmake(self, name: str, target: str, upper: Upper, *, lazy: bool = False) -> bool:
        if upper.kind is not UpperKind.ZRAM:
            return self.unmount(target, self.owns(name), lazy=lazy)
        owned = self.owns(name, upper)
        top = [m for m in self.mount_table if m.target == target]
        dev = top[-1].source if top and owned(top[-1]) else None
        was = self.unmount(target, owned, lazy=lazy)
        if dev is None and upper.device and self.zram.get(upper.device) == upper.fs_uuid:
            dev = upper.device
        if dev is None and not upper.device:  # the note make left before the record knew
            words = self.file_data.get(target + ".zram", b"").decode().split()
            if len(words) == 2 and words[1] == upper.fs_uuid and \
                    self.zram.get(f"/dev/{words[0]}") in ("", upper.fs_uuid):
                dev = f"/dev/{words[0]}"
        if dev is not None:
            self._call("zram_hot_remove")
            if dev in self.zram_held:
                self.zram_leftovers[dev] = upper.fs_uuid
            else:
                del self.zram[dev]
        self.file_data.pop(target + ".zram", None)
        return was

    def collect(self, runtime_dir: str, *, wait: float = 0.0) -> list[str]:
        """The leftovers nothing holds any more are removed (those still ours)."""
        gone = []
        for dev, fs_uuid in list(self.zram_leftovers.items()):
            if dev in self.zram_held:
                continue
            if self.zram.get(dev) == fs_uuid:
                del self.zram[dev]
                gone.append(dev)
            del self.zram_leftovers[dev]
        return gone

    def resize(self, name: str, target: str, upper: Upper, size: int) -> Upper:
        self._call("resize_upper")
        for i, m in enumerate(self.mount_table):
            if m.target == target and self.owns(name)(m):
                self.mount_table[i] = replace(
                    m, super_options=("rw", f"size={size // 1024}k"))
                return upper.model_copy(update={"size": size})
        raise MountFailed(f"No tmpfs of overlay '{name}' is mounted at '{target}'.")

    def detach_for_later(self, name: str, target: str,
                         upper: Upper | None = None) -> Callable[[], None]:
        if upper is not None and upper.kind is UpperKind.ZRAM:
            self.unmount(target, self.owns(name, upper))  # make formats it again
            return lambda: None
        self.unmount(target, self.owns(name), lazy=True)
        return lambda: None

    def usage(self, target: str, upper: Upper | None = None) -> UpperUsage:
        self._call("usage")
        return UpperUsage(size=1 << 20, used=0, inodes_used=1)


    def mount(self, name: str, target: str, *, lowers: list[str], upper: str, work: str,
              options: tuple[str, ...], target_fd: int | None = None,
              engine: MergeEngine = MergeEngine.KERNEL) -> None:
        if self._tmpfs_of(upper) is None or upper not in self.dirs:
            self._call("mount_overlay")
            raise MountFailed(f"Cannot mount the overlay: '{upper}' does not exist.")
        self._mount("mount_overlay", mount_source(name), target, "overlay", options)

    def watch_server(self, name: str, upper: str) -> int | None:
        return None

    def reap_dead(self, name: str, target: str, upper: str) -> str | None:
        if name not in self.dead_servers:
            return None
        self.dead_servers.discard(name)
        self.mount_table = [m for m in self.mount_table if m.target != target]
        return f"The FUSE server of overlay '{name}' (fuse-overlayfs) ended."

    def settle(self, name: str, upper: str) -> None:
        pass

    def verify(self, name: str, target: str,
               engine: MergeEngine = MergeEngine.KERNEL) -> None:
        found = [m for m in self.mount_table if m.target == target]
        if not found or found[-1].source != mount_source(name):
            raise MountFailed(f"The overlay did not appear at '{target}' after mounting it.")

    # -- StateFiles -----------------------------------------------------------------------

    def path_kind(self, path: str) -> str:
        """Never fails, as on Linux (an unreadable path is "other")."""
        self._call("path_kind", can_fail=False)
        if path in self.dirs:
            return "directory"
        return "other" if path in self.file_data or path in self.image_fstypes else "missing"

    def list_dir(self, path: str) -> list[str]:
        self._call("list_dir")
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/")[0] for p in self.dirs | set(self.file_data)
                 if p.startswith(prefix)}
        return sorted(names)

    def has_entries(self, path: str) -> bool:
        self._call("has_entries", can_fail=False)
        prefix = path.rstrip("/") + "/"
        return any(p.startswith(prefix) for p in self.dirs | set(self.file_data))

    def read_file(self, path: str) -> bytes | None:
        self._call("read_file")
        if path in self.dirs:
            raise OverlaydError(f"Cannot read '{path}': Is a directory.")
        return self.file_data.get(path)

    def write_file(self, path: str, data: bytes) -> None:
        """Two calls, as on the kernel: the temporary, then the rename."""
        self._call("write_file")
        if os.path.dirname(path) not in self.dirs:
            raise MountFailed(f"Cannot write '{path}': no such directory.")
        self.file_data[path + TEMP_SUFFIX] = data
        try:
            self._call("rename_file")
        except OverlaydError:  # as LinuxFiles does: a failed write takes its temporary away
            del self.file_data[path + TEMP_SUFFIX]
            raise
        self.file_data[path] = self.file_data.pop(path + TEMP_SUFFIX)

    def make_dir(self, path: str, mode: int = 0o755) -> None:
        self._call("make_dir")
        if os.path.dirname(path) not in self.dirs or path in self.dirs:
            raise MountFailed(f"Cannot create the directory '{path}'.")
        self.dirs.add(path)
        tmpfs = self._tmpfs_of(path)
        if tmpfs is not None:
            self.upper_data.setdefault(tmpfs, set())

    def remove_dir(self, path: str) -> None:
        self._call("remove_dir")
        prefix = path + "/"
        if any(p.startswith(prefix) for p in self.dirs | set(self.file_data)):
            raise OverlaydError(f"Cannot remove '{path}': Directory not empty.")
        if any(m.target == path for m in self.mount_table):
            raise OverlaydError(f"Cannot remove '{path}': busy.")
        self.dirs.discard(path)

    def remove_file(self, path: str) -> None:
        self._call("remove_file")
        self.file_data.pop(path, None)

    # -- Layers ---------------------------------------------------------------------------

    def _tmpfs_of(self, path: str) -> int | None:
        """The id of the tmpfs mount that holds PATH, if any."""
        for m in reversed(self.mount_table):
            if (m.fstype == "tmpfs" or m.mount_id in self.upper_data) and \
                    (path == m.target or path.startswith(m.target + "/")):
                return m.mount_id
        return None

    def _image_at(self, lower: str) -> str | None:
        if lower.startswith("/proc/self/fd/") and self.detached_fds:
            source = next(iter(self.detached_fds))
            return self.loops.get(source, source)
        for m in reversed(self.mount_table):
            if m.target == lower:
                return self.loops.get(m.source, m.source)
        return None

    def prepare_upper(self, lower_root: str, upper: str, work: str) -> None:
        """The upper/ and work/ directories live in the tmpfs: they go with it."""
        self._call("prepare_upper")
        if self._tmpfs_of(upper) is None:
            raise MountFailed(f"Cannot prepare '{upper}': no tmpfs there.")
        self.dirs |= {upper, work}

    def write_upper(self, upper_mount: str, *names: str) -> None:
        """A user writes NAMES through the overlay: they land in the tmpfs at UPPER_MOUNT."""
        tmpfs = self._tmpfs_of(upper_mount)
        assert tmpfs is not None, f"no tmpfs at {upper_mount}"
        self.upper_data[tmpfs] |= set(names)

    def apply_upper(self, upper: str, lower: str, progress: Progress | None) -> Applied:
        """Copies the writes one by one: a crash in the middle leaves part of them."""
        tmpfs, image = self._tmpfs_of(upper), self._image_at(lower)
        writes = sorted(self.upper_data.get(tmpfs, set())) if tmpfs is not None else \
            sorted(self.image_data.get(self._image_at(upper) or "", set()))  # a layer
        self._call("apply_upper")
        for i, name in enumerate(writes, 1):
            self._call("apply_entry")
            if image is not None:
                self.image_data.setdefault(image, set()).add(name)
            if progress is not None:  # after each entry, as host/merge.py does
                progress(i, 0)
        return Applied(len(writes), 0, 0.0)

    def diff(self, upper: str, lower: str) -> list[tuple[str, str]]:
        self._call("diff")
        tmpfs = self._tmpfs_of(upper)
        return [(f"/{n}", "added") for n in sorted(self.upper_data.get(tmpfs or -1, set()))]

    def remove_tree(self, path: str, *, keep_top: bool = False) -> None:
        """PATH and every directory below it (KEEP_TOP: only those below)."""
        self.dirs = {d for d in self.dirs
                     if not d.startswith(path + "/") and (keep_top or d != path)}

    # -- LayerFiles -----------------------------------------------------------------------

    def prepare_dir(self, directory: str) -> None:
        self._call("prepare_layer_dir")
        parts = directory.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.dirs.add("/" + "/".join(parts[:i]))

    def next_path(self, directory: str, fmt: str) -> str:
        numbers = [int(os.path.basename(p).split(".")[0]) for p in self.file_data
                   if os.path.dirname(p) == directory
                   and os.path.basename(p).split(".")[0].isdigit()]
        return f"{directory}/{max(numbers, default=0) + 1:04d}.{fmt}"

    def build(self, upper: str, path: str, fmt: str,
              cancelled: Callable[[], bool] | None = None) -> Applied:
        """The tool writes the temporary (a kill leaves it), then it is renamed."""
        tmpfs = self._tmpfs_of(upper)
        writes = set(self.upper_data.get(tmpfs, set())) if tmpfs is not None else set()
        tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp"
        self._call("build_layer")
        self.file_data[tmp] = b"half"
        if cancelled is not None and cancelled():
            del self.file_data[tmp]
            raise Cancelled("The commit was cancelled while the layer was written.")
        self._call("rename_layer")
        del self.file_data[tmp]
        self.file_data[path] = b"layer"
        self.image_fstypes[path] = fmt
        self.image_data[path] = writes
        return Applied(len(writes), 0, 0.0)

    def squash(self, sources: list[str], path: str, fmt: str,
               cancelled: Callable[[], bool] | None = None) -> Applied:
        """The layers' writes, together; as build, the temporary first."""
        writes: set[str] = set()
        for src in sources:
            image = self._image_at(src)
            writes |= self.image_data.get(image or "", set())
        tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp"
        self._call("squash_layers")
        self.file_data[tmp] = b"half"
        self._call("rename_layer")
        del self.file_data[tmp]
        self.file_data[path] = b"layer"
        self.image_fstypes[path] = fmt
        self.image_data[path] = writes
        return Applied(len(writes), 0, 0.0)

    def remove(self, path: str) -> None:
        self._call("remove_layer")
        tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp"
        for p in (tmp, path):
            self.file_data.pop(p, None)
        self.image_fstypes.pop(path, None)
        self.image_data.pop(path, None)
