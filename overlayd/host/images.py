"""Opening images for a caller: which file, opened how, checked against what.

The policy of who may use which file as a lower layer lives here (review: it was ~170
lines inside one fat host class), with the loop devices the images go on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct

from overlayd.errors import CommitFailed, InvalidSpec
from overlayd.fstype import PROBE_BYTES, detect_fstype
from overlayd.host import loop as loopdev
from overlayd.host.ascaller import open_as
from overlayd.host.errors import Op, map_os_errors
from overlayd.host.imageusers import find_users
from overlayd.host.ports import ImageInfo
from overlayd.model import LowerKind
from overlayd.partitions import PartitionError, find, read_table

BLKGETSIZE64 = 0x80081272
IMAGE_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_SPECIAL = {stat.S_IFSOCK: "socket", stat.S_IFIFO: "pipe or fifo",
            stat.S_IFCHR: "character device"}


def _refuse_special(st: os.stat_result, shown: str, field: str) -> None:
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        kind = _SPECIAL.get(stat.S_IFMT(st.st_mode), "special file")
        raise InvalidSpec(f"The image '{shown}' is a {kind}, not an image file, block device "
                          "or directory.", field)


class LinuxImages:
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
            LinuxImages._walk_links(path, field)
        except OSError as e:
            raise InvalidSpec(f"Cannot resolve the image '{path}': {e.strerror}.", field) \
                from None

    @staticmethod
    def _walk_links(path: str, field: str) -> None:
        """Resolve PATH one component at a time, as the kernel does; any symbolic link on
        the way that is not udev's (under /dev) refuses it: a planted directory link
        (/x/dirlink/sda with dirlink -> /dev) as much as a link to the device itself."""
        todo = os.path.abspath(path).split("/")[1:]
        current, hops = "/", 0
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                current = os.path.dirname(current)
                continue
            candidate = os.path.join(current, name)
            if not os.path.islink(candidate):
                current = candidate
                continue
            if not candidate.startswith("/dev/"):
                raise InvalidSpec(f"The image '{path}' is a symbolic link to the block device "
                                  f"'{os.path.realpath(path)}' (through '{candidate}'); name "
                                  "the device itself if you mean it.", field)
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            target = os.readlink(candidate)
            todo = target.split("/") + todo
            if target.startswith("/"):
                current = "/"

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

    def attach_loop(self, info: ImageInfo, *, read_only: bool, name: str, offset: int = 0,
                    sizelimit: int = 0) -> loopdev.LoopDevice:
        with map_os_errors(f"attach '{info.path}' to a loop device", Op.MOUNT):
            return loopdev.attach(info.fd, read_only=read_only, name=name, offset=offset,
                                  sizelimit=sizelimit)

    def loop_backing(self, device: str) -> str | None:
        return loopdev.backing_file(device)

    def loop_window(self, device: str) -> tuple[int, int] | None:
        return loopdev.window(device)

    def partition(self, info: ImageInfo, want: int | str, shown: str) -> ImageInfo:
        """INFO narrowed to its partition WANT, read from the table through INFO's fd (the
        parser is pure: overlayd/partitions.py); the partition's own file system probed."""
        field = "partition"
        if info.kind is LowerKind.DIRECTORY:
            raise InvalidSpec(f"The image '{shown}' is a directory; it has no partitions "
                              "(leave out 'partition').", field)
        if info.kind is LowerKind.BLOCK:
            self._refuse_partition_device(info.fd, shown)

        def read(offset: int, length: int) -> bytes:
            return os.pread(info.fd, length, offset) if offset < info.size else b""
        try:
            part = find(read_table(read, info.size), want, info.size)
            head = os.pread(info.fd, min(PROBE_BYTES, part.size), part.start)
        except PartitionError as e:
            has = f" (it holds {info.detected_fstype} itself: leave out 'partition')" \
                if info.detected_fstype not in (None, "partition-table") else ""
            raise InvalidSpec(f"The image '{shown}' {e}{has}.", field) from None
        except OSError as e:
            raise InvalidSpec(f"The partition table of '{shown}' cannot be read: "
                              f"{e.strerror}.", field) from None
        return ImageInfo(info.path, info.kind, info.dev, info.ino, part.size,
                         detect_fstype(head), info.fd, part.start, part.size, want)

    @staticmethod
    def _refuse_partition_device(fd: int, shown: str) -> None:
        """A block device that is itself a partition (/dev/sdb2) has no table inside."""
        rdev = os.fstat(fd).st_rdev
        if os.path.exists(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}/partition"):
            raise InvalidSpec(f"The device '{shown}' is itself a partition; give it without "
                              "'partition', or give the whole disk with it.", "partition")

    def users(self, image: str, dev: int, ino: int, *, own_devices: set[str],
              own_mounts: set[str], writers_only: bool = False,
              window: tuple[int, int] = (0, 0)) -> list[str]:
        return find_users(image, dev, ino, own_devices=own_devices, own_mounts=own_mounts,
                          writers_only=writers_only, window=window)

    def fd_path(self, fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return f"fd {fd}"
