"""LinuxHost: the Host protocol on the real kernel, through syscalls only.

Every OSError is turned into an overlayd error here, in ``_mount_errors`` and the
image checks, so nothing above this layer sees an errno.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import stat
import struct
from collections.abc import Callable, Iterator

from overlayd.checks import PINNED
from overlayd.errors import (
    CommitFailed,
    InvalidSpec,
    MountFailed,
    NoSpace,
    OverlayBusy,
    describe_holders,
)
from overlayd.fstype import PROBE_BYTES, detect_fstype
from overlayd.host import loop as loopdev
from overlayd.host import mountinfo
from overlayd.host.ascaller import open_as
from overlayd.host.base import Applied, ImageInfo, Progress
from overlayd.host.holders import find_holders
from overlayd.host.merge import ApplyError, apply_upper
from overlayd.host.ovlformat import user_xattrs
from overlayd.host.syscalls import (
    MNT_DETACH,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NODIRATIME,
    MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    MOUNT_ATTR_STRICTATIME,
    RESOLVE_NO_SYMLINKS,
    FsContext,
    openat2,
    syncfs,
    umount2,
)
from overlayd.host.syscalls import MOUNT_ATTR_NOATIME as _NOATIME
from overlayd.host.upperdiff import diff_upper
from overlayd.model import LowerKind, UpperUsage

BLKGETSIZE64 = 0x80081272
IMAGE_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_SPECIAL = {stat.S_IFSOCK: "socket", stat.S_IFIFO: "pipe or fifo",
            stat.S_IFCHR: "character device"}


def _refuse_special(st: os.stat_result, shown: str, field: str) -> None:
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        kind = _SPECIAL.get(stat.S_IFMT(st.st_mode), "special file")
        raise InvalidSpec(f"The image '{shown}' is a {kind}, not an image file, block device "
                          "or directory.", field)

_ATTRS = {
    "ro": MOUNT_ATTR_RDONLY, "nosuid": MOUNT_ATTR_NOSUID, "nodev": MOUNT_ATTR_NODEV,
    "noexec": MOUNT_ATTR_NOEXEC, "noatime": _NOATIME, "strictatime": MOUNT_ATTR_STRICTATIME,
    "nodiratime": MOUNT_ATTR_NODIRATIME, "relatime": 0, "rw": 0,
}



def mount_attrs(options: tuple[str, ...]) -> int:
    flags = 0
    for o in options:
        flags |= _ATTRS[o]
    return flags


@contextlib.contextmanager
def _mount_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        detail = e.strerror or os.strerror(e.errno or 0)
        if e.errno == errno.EBUSY:
            raise OverlayBusy(f"Cannot {what}: it is busy ({detail}).") from None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"Cannot {what}: no space left ({detail}).") from None
        if e.errno == errno.ENODEV:
            raise MountFailed(f"Cannot {what}: the kernel does not support this file system.",
                              e.errno) from None
        raise MountFailed(f"Cannot {what}: {detail}.", e.errno) from None


class LinuxHost:
    def memory_total(self) -> int:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
        raise MountFailed("Cannot read the size of memory from /proc/meminfo.")

    def kernel_filesystems(self) -> frozenset[str]:
        with open("/proc/filesystems") as f:
            return frozenset(line.split()[-1] for line in f if line.strip())

    # -- images ---------------------------------------------------------------------------

    def open_image(self, path: str | None, fd: int | None, *, as_uid: int = 0) -> ImageInfo:
        """Open and probe the image, every check made on the open file, not the path:

        - an fd the caller opened must be a real read (or read-write) open: not O_PATH, not
          write-only; we reopen it read-only for ourselves;
        - a path given by a non-root caller is opened with the caller's credentials first,
          so root neither reads nor even looks at a path for someone who could not;
        - a path given by root is looked at first, so that no character device, fifo or
          socket is ever opened (opening some devices has side effects), and must still be
          the same file once open.
        Opens are non-blocking: a fifo swapped in at the last moment cannot hang overlayd.
        Directories are lowers for root only."""
        if fd is not None:
            field, shown = "image_fd", f"fd {fd}"
            ofd = self._reopen_callers_fd(fd)
        elif as_uid != 0:
            field, shown = "image", path or ""
            ofd = self._open_image_as(shown, as_uid)
        else:
            field, shown = "image", path or ""
            ofd = self._open_image_as_root(shown)
        try:
            st = os.fstat(ofd)
            if stat.S_ISDIR(st.st_mode):
                if fd is not None or as_uid != 0:
                    raise InvalidSpec(f"The image '{shown}' is a directory; only root may use "
                                      "a directory as the lower layer.", field)
                real = os.readlink(f"/proc/self/fd/{ofd}")
                os.close(ofd)
                return ImageInfo(real, LowerKind.DIRECTORY, st.st_dev, st.st_ino, 0, None, -1)
            _refuse_special(st, shown, field)
            if fd is None and stat.S_ISBLK(st.st_mode):
                self._refuse_device_behind_symlink(shown, field)
            real = os.readlink(f"/proc/self/fd/{ofd}")
            return self._probe(ofd, real, st, shown, field)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(ofd)
            raise

    @staticmethod
    def _reopen_callers_fd(fd: int) -> int:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            st = os.fstat(fd)
        except OSError:
            raise InvalidSpec(f"The image fd {fd} is not an open file descriptor.",
                              "image_fd") from None
        if flags & os.O_PATH:
            raise InvalidSpec(f"The image fd {fd} was opened with O_PATH, which does not show "
                              "that the caller may read it; open it for reading.", "image_fd")
        if flags & os.O_ACCMODE == os.O_WRONLY:
            raise InvalidSpec(f"The image fd {fd} was opened write-only; open it for reading.",
                              "image_fd")
        if stat.S_ISDIR(st.st_mode):
            raise InvalidSpec(f"The image fd {fd} is a directory; only root may use a "
                              "directory as the lower layer, and by path.", "image_fd")
        _refuse_special(st, f"fd {fd}", "image_fd")
        try:  # our own read-only open file description: the loop device inherits read-only
            return os.open(f"/proc/self/fd/{fd}", IMAGE_OPEN)
        except OSError as e:
            raise InvalidSpec(f"The image fd {fd} cannot be reopened: {e.strerror}.",
                              "image_fd") from None

    @staticmethod
    def _open_image_as(path: str, uid: int) -> int:
        try:
            return open_as(path, uid, IMAGE_OPEN)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise InvalidSpec(f"The image '{path}' does not exist.", "image") from None
            raise InvalidSpec(f"The image '{path}' cannot be read by uid {uid}: "
                              f"{e.strerror}.", "image") from None

    @staticmethod
    def _open_image_as_root(path: str) -> int:
        try:
            before = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidSpec(f"The image '{path}' does not exist.", "image") from None
        except OSError as e:
            raise InvalidSpec(f"Cannot look at the image '{path}': {e.strerror}.",
                              "image") from None
        if not stat.S_ISDIR(before.st_mode):
            _refuse_special(before, path, "image")
        try:
            ofd = os.open(path, IMAGE_OPEN)
        except OSError as e:
            raise InvalidSpec(f"The image '{path}' cannot be read: {e.strerror}.",
                              "image") from None
        after = os.fstat(ofd)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            os.close(ofd)
            raise InvalidSpec(f"The image '{path}' changed while it was being opened.", "image")
        return ofd

    @staticmethod
    def _refuse_device_behind_symlink(path: str, field: str) -> None:
        """A block device must be named, not reached through a link someone planted:
        /tmp/innocent.img -> /dev/sda is refused. udev's links (/dev/disk/by-*) are fine."""
        try:
            LinuxHost._walk_links(path, field)
        except OSError as e:
            raise InvalidSpec(f"Cannot resolve the image '{path}': {e.strerror}.", field) \
                from None

    @staticmethod
    def _walk_links(path: str, field: str) -> None:
        real = os.path.realpath(path)
        current = os.path.abspath(path)
        while current != real:
            if os.path.islink(current) and not current.startswith("/dev/"):
                raise InvalidSpec(f"The image '{path}' is a symbolic link to the block device "
                                  f"'{real}'; name the device itself if you mean it.", field)
            parent = os.path.dirname(current)
            target = os.readlink(current) if os.path.islink(current) else None
            if target is None:
                break
            current = os.path.normpath(os.path.join(parent, target))

    def _probe(self, ofd: int, real: str, st: os.stat_result, shown: str, field: str) -> ImageInfo:
        kind = LowerKind.BLOCK if stat.S_ISBLK(st.st_mode) else LowerKind.FILE
        size = st.st_size
        if kind is LowerKind.BLOCK:
            try:
                size = struct.unpack("Q", fcntl.ioctl(ofd, BLKGETSIZE64, b"\0" * 8))[0]
            except OSError as e:
                raise InvalidSpec(f"Cannot read the size of the device '{shown}': "
                                  f"{e.strerror}.", field) from None
        if size == 0:
            raise InvalidSpec(f"The image '{shown}' is empty (0 bytes); it holds no file system.",
                              field)
        try:
            head = os.pread(ofd, PROBE_BYTES, 0)
        except OSError as e:
            raise InvalidSpec(f"The image '{shown}' cannot be read: {e.strerror}.", field) from None
        return ImageInfo(real, kind, st.st_dev, st.st_ino, size, detect_fstype(head), ofd)

    def reopen_image(self, image: str, dev: int, ino: int, *, writable: bool,
                     as_uid: int = 0) -> ImageInfo:
        """Open the recorded image again, checking it is still the same inode; for AS_UID
        other than root, with that user's credentials."""
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = open_as(image, as_uid, flags) if as_uid != 0 else os.open(image, flags)
        except OSError as e:
            who = f" as uid {as_uid}" if as_uid != 0 else ""
            how = " for writing" if writable else ""
            raise CommitFailed(f"Cannot open the image '{image}'{how}{who}: "
                               f"{e.strerror}.") from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dev, ino):
            os.close(fd)
            raise CommitFailed(f"The image '{image}' was replaced by another file since the "
                               "overlay was created; refusing to write to it.")
        kind = LowerKind.BLOCK if stat.S_ISBLK(st.st_mode) else LowerKind.FILE
        return ImageInfo(image, kind, dev, ino, st.st_size, None, fd)

    def open_lower_dir(self, path: str, dev: int, ino: int) -> int:
        """The recorded directory lower, opened and checked to be the same directory; callers
        then use /proc/self/fd/N, so a path swapped for a symlink cannot redirect them."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise CommitFailed(f"Cannot open the lower directory '{path}': {e.strerror}.") \
                from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dev, ino):
            os.close(fd)
            raise CommitFailed(f"The lower directory '{path}' was replaced since the overlay "
                               "was created; refusing to use it.")
        return fd

    def close_fd(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)

    def close_image(self, info: ImageInfo) -> None:
        if info.fd >= 0:
            os.close(info.fd)
            info.fd = -1

    def attach_loop(self, info: ImageInfo, *, read_only: bool, name: str) -> loopdev.LoopDevice:
        with _mount_errors(f"attach '{info.path}' to a loop device"):
            return loopdev.attach(info.fd, read_only=read_only, name=name)

    def loop_backing(self, device: str) -> str | None:
        return loopdev.backing_file(device)

    # -- mounts ---------------------------------------------------------------------------

    def mount_fs(self, source: str, target: str, fstype: str, *, read_only: bool) -> None:
        mode = "read-only" if read_only else "read-write"
        with _mount_errors(f"mount {source} ({fstype}) {mode} at '{target}'"), \
                FsContext(fstype) as fc:
            fc.set_string("source", source)
            if read_only:
                fc.set_flag("ro")
            fc.create()
            fc.mount_at(target, MOUNT_ATTR_RDONLY if read_only else 0)

    def mount_tmpfs(self, source: str, target: str, size: int) -> None:
        with _mount_errors(f"mount a tmpfs of {size} bytes at '{target}'"), \
                FsContext("tmpfs") as fc:
            fc.set_string("source", source)
            fc.set_string("size", str(size))
            fc.set_string("mode", "0700")
            fc.create()
            fc.mount_at(target, MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID)

    def mount_overlay(self, source: str, target: str, *, lower: str, upper: str, work: str,
                      options: tuple[str, ...], target_fd: int | None = None) -> None:
        with _mount_errors(f"mount the overlay at '{target}'"), FsContext("overlay") as fc:
            fc.set_string("source", source)
            fc.set_string("lowerdir+", lower)  # no escaping of ':' or ',' needed
            fc.set_string("upperdir", upper)
            fc.set_string("workdir", work)
            for key, value in PINNED:
                fc.set_string(key, value)
            fc.create()
            fc.mount_at(target, mount_attrs(options), target_fd)

    def mounts(self) -> list[mountinfo.MountInfo]:
        return mountinfo.read_mounts()

    def _top_owned(self, target: str, owned: Callable[[mountinfo.MountInfo], bool],
                   mounts: list[mountinfo.MountInfo] | None) -> bool:
        """True if the top mount at TARGET is ours, False if nothing is mounted there;
        refuses (MountFailed) when someone else's mount is on top."""
        top = [m for m in (mounts if mounts is not None else self.mounts()) if m.target == target]
        if not top:
            return False
        if not owned(top[-1]):
            raise MountFailed(f"Refusing to unmount '{target}': what is mounted there "
                              f"({top[-1].source}, {top[-1].fstype}) was not mounted by overlayd.")
        return True

    def unmount(self, target: str, owned: Callable[[mountinfo.MountInfo], bool], *,
                lazy: bool = False, mounts: list[mountinfo.MountInfo] | None = None) -> bool:
        """Unmount the top mount at TARGET if OWNED says it is ours; False if none is there.
        MOUNTS, a mount table read moments ago by the same operation, saves a re-read."""
        if not self._top_owned(target, owned, mounts):
            return False
        try:
            umount2(target, MNT_DETACH if lazy else 0)
        except OSError as e:
            if e.errno == errno.EBUSY:
                holders = self.holders(target)
                raise OverlayBusy(f"'{target}' is busy: in use by {describe_holders(holders)}.",
                                  holders) from None
            if e.errno == errno.EINVAL:  # not a mount point (any more)
                return False
            raise MountFailed(f"Cannot unmount '{target}': {e.strerror}.", e.errno) from None
        return True

    def detach_for_later(self, target: str, owned: Callable[[mountinfo.MountInfo], bool], *,
                         mounts: list[mountinfo.MountInfo] | None = None) -> Callable[[], None]:
        """Detach the mount at TARGET now, but free it later: an O_PATH fd keeps its
        superblock alive until the returned function closes it. Unmounting a tmpfs frees
        its pages synchronously (70 ms for 512 MiB), which a commit's caller need not wait
        for."""
        if not self._top_owned(target, owned, mounts):
            return lambda: None
        with _mount_errors(f"detach '{target}'"):
            fd = os.open(target, os.O_PATH | os.O_CLOEXEC)
            try:
                umount2(target, MNT_DETACH)
            except BaseException:
                os.close(fd)
                raise
        return lambda: os.close(fd)

    def holders(self, target: str) -> list[tuple[int, str]]:
        ids = {m.mount_id for m in self.mounts() if m.target == target
               or m.target.startswith(target.rstrip("/") + "/")}
        return find_holders(target, ids)

    # -- directories ----------------------------------------------------------------------

    def path_kind(self, path: str) -> str:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "missing"
        except OSError:
            return "other"
        return "directory" if stat.S_ISDIR(st.st_mode) else "other"

    def fd_path(self, fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return f"fd {fd}"

    def open_mountpoint(self, path: str, *, follow_symlinks: bool) -> tuple[int, str]:
        """An O_PATH fd of the mount point directory and the path it really has. The checks
        and the mount then act on this very directory, whatever happens to the path; without
        FOLLOW_SYMLINKS no component of PATH may be a symbolic link."""
        resolve = 0 if follow_symlinks else RESOLVE_NO_SYMLINKS
        try:
            fd = openat2(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, resolve)
        except OSError as e:
            reason = {errno.ENOENT: "does not exist; create the directory first",
                      errno.ENOTDIR: "is not a directory",
                      errno.ELOOP: "goes through a symbolic link; name the real directory",
                      }.get(e.errno or 0, f"cannot be opened: {e.strerror}")
            raise InvalidSpec(f"The mount point '{path}' {reason}.", "mountpoint") from None
        return fd, os.readlink(f"/proc/self/fd/{fd}")

    def user_name(self, uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def read_file(self, path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_file(self, path: str, text: str) -> None:
        tmp = f"{path}.tmp"
        with _mount_errors(f"write '{path}'"):
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)

    def make_dir(self, path: str, mode: int = 0o755) -> None:
        with _mount_errors(f"create the directory '{path}'"):
            os.mkdir(path, mode)

    def remove_dir(self, path: str) -> None:
        with _mount_errors(f"remove '{path}'"), contextlib.suppress(FileNotFoundError):
            os.rmdir(path)

    def remove_file(self, path: str) -> None:
        with _mount_errors(f"remove '{path}'"), contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def prepare_upper(self, lower_root: str, upper: str, work: str) -> None:
        """Make upper/ and work/; the upper root takes the lower root's owner, mode, xattrs
        and times, because the merged root shows the upper root's attributes."""
        with _mount_errors(f"prepare '{upper}'"):
            os.mkdir(work, 0o700)
            os.mkdir(upper, 0o755)
            st = os.stat(lower_root)
            os.chown(upper, st.st_uid, st.st_gid)
            for name, value in user_xattrs(lower_root).items():
                with contextlib.suppress(OSError):
                    os.setxattr(upper, name, value)
            os.chmod(upper, stat.S_IMODE(st.st_mode))
            os.utime(upper, ns=(st.st_atime_ns, st.st_mtime_ns))

    # -- commit, diff, usage --------------------------------------------------------------

    def apply_upper(self, upper: str, lower: str, progress: Progress | None) -> Applied:
        try:
            r = apply_upper(upper, lower, progress)
        except ApplyError as e:
            where = f"while writing '{e.relpath}' ({e.done.entries} entries applied)"
            if e.cause.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"The image is full: no space left {where}.") from None
            raise CommitFailed(f"Cannot apply the changes: {e.cause.strerror} {where}.") from None
        return Applied(r.entries, r.bytes, r.seconds)

    def diff(self, upper: str, lower: str) -> list[tuple[str, str]]:
        try:
            return diff_upper(upper, lower)
        except OSError as e:
            raise MountFailed(f"Cannot read the changes: {e.strerror} ({e.filename}).") from None
        except RecursionError:
            raise MountFailed("Cannot read the changes: the tree of changes is nested too "
                              "deeply to walk.") from None

    def usage(self, path: str) -> UpperUsage:
        try:
            v = os.statvfs(path)
        except OSError as e:
            raise MountFailed(f"Cannot read the usage of '{path}': {e.strerror}.") from None
        return UpperUsage(size=v.f_blocks * v.f_frsize, used=(v.f_blocks - v.f_bfree) * v.f_frsize,
                          inodes_used=v.f_files - v.f_ffree)

    def syncfs(self, path: str) -> None:
        with _mount_errors(f"flush '{path}' to disk"):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                syncfs(fd)
            finally:
                os.close(fd)
