"""What the engine asks of the kernel: narrow ports, one per kind of resource.

``Host`` bundles them; ``linux.LinuxHost`` is the real kernel, ``fake.FakeHost`` an
in-memory stand-in with fault injection for pure-logic tests. Contract: methods raise only
``overlayd.errors`` exceptions, with messages a person can act on; every method blocks,
and the manager runs them off the event loop.

The two seams for what comes next:
- ``UpperBackend``: where the writes live (a tmpfs today; zram later);
- ``MergeMount``: what merges the layers (kernel overlayfs, or fuse-overlayfs by the
  record's ``merged.engine``).
``ImageLocks`` holds QEMU-style locks on the images in use.
A new backend implements one of these and the engine does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from overlayd.model import LowerKind, MergeEngine, Upper, UpperUsage
from overlayd.mountinfo import MountInfo

Progress = Callable[[int, int], None]
Owned = Callable[[MountInfo], bool]  # may overlayd unmount this mount?


@dataclass
class ImageInfo:
    """An opened image: what Create needs to know before it attaches anything."""

    path: str  # as resolved by the kernel (/proc/self/fd/N)
    kind: LowerKind
    dev: int
    ino: int
    size: int
    detected_fstype: str | None  # None: no signature found (or a directory)
    fd: int  # our own read-only fd; -1 once closed
    # One partition of it (issue 15; ``Images.partition``): where it lies, in bytes, and
    # as asked. SIZE and DETECTED_FSTYPE are then the partition's.
    offset: int = 0
    sizelimit: int = 0
    partition: int | str | None = None


@dataclass
class Applied:
    entries: int
    bytes: int
    seconds: float


class Loop(Protocol):
    path: str

    def release(self) -> None: ...


class System(Protocol):
    def memory_total(self) -> int: ...
    def kernel_filesystems(self) -> frozenset[str]: ...
    def user_name(self, uid: int) -> str: ...
    # The file system at PATH: (its size, the bytes free for root), one statvfs.
    def fs_space(self, path: str) -> tuple[int, int]: ...


class Images(Protocol):
    """Opening images for a caller, and loop devices."""

    def open_image(self, path: str | None, fd: int | None, *, as_uid: int = 0) -> ImageInfo: ...
    def reopen_image(self, image: str, dev: int, ino: int, *, writable: bool,
                     as_uid: int = 0) -> ImageInfo: ...
    def fd_path(self, fd: int) -> str: ...
    def close_image(self, info: ImageInfo) -> None: ...
    def open_lower_dir(self, path: str, dev: int, ino: int) -> int: ...
    def close_fd(self, fd: int) -> None: ...
    # OFFSET and SIZELIMIT: the loop device shows only that part of the file (a partition).
    def attach_loop(self, info: ImageInfo, *, read_only: bool, name: str, offset: int = 0,
                    sizelimit: int = 0) -> Loop: ...
    def loop_backing(self, device: str) -> str | None: ...
    # (offset, sizelimit) of an attached loop device; None when it is not one.
    def loop_window(self, device: str) -> tuple[int, int] | None: ...
    # The opened image INFO narrowed to its partition WANT (a number or a GPT label): its
    # place, size and file system. InvalidSpec (field "partition") when it has no such
    # partition, no partition table, or is a directory or a partition itself.
    def partition(self, info: ImageInfo, want: int | str, shown: str) -> ImageInfo: ...
    # Who else uses the image (sentences naming each: loop devices and their mounts,
    # mounts of its block device, processes writing it or holding a lock on it), leaving
    # out overlayd's own OWN_DEVICES and mounts at OWN_MOUNTS. Its cost grows with the
    # host's loop devices and processes: Commit only (and a failed Create, to say why).
    # WINDOW (offset, size; size 0 to the end): only loop devices that show a byte of it.
    def users(self, image: str, dev: int, ino: int, *, own_devices: set[str],
              own_mounts: set[str], writers_only: bool = False,
              window: tuple[int, int] = (0, 0)) -> list[str]: ...


class ImageLocks(Protocol):
    """QEMU-style image locks (OFD locks on QEMU's bytes), held by the daemon while an
    overlay reads the image, and for writing while a commit writes it. ImageInUse when
    someone else's lock is in the way."""

    def hold(self, path: str, dev: int, ino: int, fd: int | None = None) -> None: ...
    def release(self, dev: int, ino: int) -> None: ...
    def lock_write(self, path: str, dev: int, ino: int) -> None: ...
    def unlock_write(self, dev: int, ino: int) -> None: ...


class Mounts(Protocol):
    """Mounting file systems, unmounting only what OWNED says is ours, the mount table."""

    def mount_fs(self, source: str, target: str, fstype: str, *, read_only: bool) -> None: ...
    # A read-write mount attached nowhere (its fd; /proc/self/fd/N reaches its files):
    # no other mount namespace can copy it, and it is gone when the fd is closed.
    def open_detached(self, source: str, fstype: str) -> int: ...
    def close_detached(self, fd: int) -> None: ...
    def open_mountpoint(self, path: str, *, follow_symlinks: bool) -> tuple[int, str]: ...
    def unmount(self, target: str, owned: Owned, *, lazy: bool = False) -> bool: ...
    def at(self, path: str) -> MountInfo | None: ...  # the top mount at PATH
    def containing(self, path: str) -> list[MountInfo]: ...  # PATH's mount, then its parents
    # The whole mount table, as mountinfo shows it: recovery only (its cost grows with
    # every mount on the host, so no per-call path may use it).
    def table(self) -> list[MountInfo]: ...
    def holders(self, target: str) -> list[tuple[int, str]]: ...
    def syncfs(self, path: str) -> None: ...
    # The top mount at each of PATHS: one question per path where the kernel answers
    # one mount at a time (statmount), one read of the table where it does not.
    def at_each(self, paths: list[str]) -> dict[str, MountInfo | None]: ...
    # Changes of the mount table as an fd that is readable when it changed.
    def watch(self) -> MountWatch: ...


class MountWatch(Protocol):
    def fileno(self) -> int: ...
    def drain(self) -> bool: ...  # consume; True if the table changed since the last call
    def close(self) -> None: ...


class StateFiles(Protocol):
    """Plain files and directories: the state records and the per-overlay directories."""

    def path_kind(self, path: str) -> str: ...  # "missing" | "directory" | "other"
    def list_dir(self, path: str) -> list[str]: ...
    def has_entries(self, path: str) -> bool: ...  # a directory with anything in it
    def read_file(self, path: str) -> bytes | None: ...  # None: no such file
    def write_file(self, path: str, data: bytes) -> None: ...  # atomic: temp file + rename
    def make_dir(self, path: str, mode: int = 0o755) -> None: ...
    def remove_dir(self, path: str) -> None: ...
    def remove_file(self, path: str) -> None: ...


class Layers(Protocol):
    """Reading and merging overlayfs layers: the upper's format lives behind this."""

    def prepare_upper(self, lower_root: str, upper: str, work: str) -> None: ...
    def apply_upper(self, upper: str, lower: str, progress: Progress | None) -> Applied: ...
    def diff(self, upper: str, lower: str) -> list[tuple[str, str]]: ...


class LayerFiles(Protocol):
    """Layer files (issue 14): an upper written as a read-only erofs or squashfs image.

    ``build`` leaves only the overlayfs format in the upper (drops the overlay's private
    bookkeeping xattrs, keeps whiteouts, opaque markers and escaped names), runs the tool
    into PATH's temporary name, fsyncs it, renames it to PATH and fsyncs the directory:
    PATH exists only whole. ``temporary`` is that name; ``remove`` takes PATH and its
    temporary away (quietly when missing). CANCELLED is polled while the tool runs."""

    def prepare_dir(self, directory: str) -> None: ...
    def next_path(self, directory: str, fmt: str) -> str: ...
    def build(self, upper: str, path: str, fmt: str,
              cancelled: Callable[[], bool] | None = None) -> Applied: ...
    # The layers mounted at SOURCES (lowest first) composed into one layer file PATH.
    def squash(self, sources: list[str], path: str, fmt: str,
               cancelled: Callable[[], bool] | None = None) -> Applied: ...
    def remove(self, path: str) -> None: ...


class UpperBackend(Protocol):
    """The file system that takes the writes, mounted at Layout.upper_mount; what it is
    (a tmpfs, a zram device) is the record's ``Upper``, which each call gets."""

    # What the record says before anything is made (an identity to find it by).
    def plan(self, upper: Upper) -> Upper: ...
    # Make it at TARGET; the Upper as made (what recovery needs to find it again).
    def make(self, name: str, target: str, upper: Upper) -> Upper: ...
    def owns(self, name: str, upper: Upper | None = None) -> Owned: ...
    # Unmount it (if it is ours) and free what backs it; False if nothing was mounted.
    def unmake(self, name: str, target: str, upper: Upper, *, lazy: bool = False) -> bool: ...
    # Change the limit of the live upper at TARGET to SIZE, keeping its writes (tmpfs only);
    # the Upper with the new size.
    def resize(self, name: str, target: str, upper: Upper, size: int) -> Upper: ...
    def detach_for_later(self, name: str, target: str,
                         upper: Upper | None = None) -> Callable[[], None]: ...
    def usage(self, target: str, upper: Upper | None = None) -> UpperUsage: ...
    # Free what discarded overlays left behind because others held it (zram devices held
    # by another mount namespace); what was freed.
    # WAIT: seconds to wait for one that is being let go (not mounted elsewhere any more).
    def collect(self, runtime_dir: str, *, wait: float = 0.0) -> list[str]: ...


class MergeMount(Protocol):
    """What puts the layers together at the mount point: the kernel's overlayfs, or
    fuse-overlayfs (a server process that outlives the daemon, as a kernel mount does).
    UPPER (the upperdir) says where a FUSE server's identity is kept: beside it."""

    def mount(self, name: str, target: str, *, lowers: list[str], upper: str, work: str,
              options: tuple[str, ...], target_fd: int | None = None,
              engine: MergeEngine = MergeEngine.KERNEL) -> None: ...
    def owns(self, name: str) -> Owned: ...  # either engine's mount of overlay NAME
    def verify(self, name: str, target: str,
               engine: MergeEngine = MergeEngine.KERNEL) -> None: ...
    # FUSE only (None / nothing for a kernel overlay): a pidfd of the live server, readable
    # when it ends; a sentence when the server is gone (its dead mount detached then);
    # after the mount is unmounted, the server's end (stopped if it lingers).
    def watch_server(self, name: str, upper: str) -> int | None: ...
    def reap_dead(self, name: str, target: str, upper: str) -> str | None: ...
    def settle(self, name: str, upper: str) -> None: ...


class Host(Protocol):
    @property
    def system(self) -> System: ...
    @property
    def images(self) -> Images: ...
    @property
    def locks(self) -> ImageLocks: ...
    @property
    def mounts(self) -> Mounts: ...
    @property
    def files(self) -> StateFiles: ...
    @property
    def layers(self) -> Layers: ...
    @property
    def layerfiles(self) -> LayerFiles: ...
    @property
    def upper(self) -> UpperBackend: ...
    @property
    def merge(self) -> MergeMount: ...
