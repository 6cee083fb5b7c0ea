"""Upper backends: the file system that takes an overlay's writes.

``TmpfsUpper`` (a size-limited tmpfs) and ``ZramUpper`` (ext4 without a journal on a
hot-added zram device); ``Uppers`` is the port: it picks one by the record's ``upper.kind``.
Each has the methods of ``ports.UpperBackend``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Callable

from overlayd.errors import MountFailed, OverlaydError
from overlayd.host.errors import Op, map_os_errors
from overlayd.host.mounts import LinuxMounts, top_owned
from overlayd.host.ports import Owned
from overlayd.host.syscalls import (
    MNT_DETACH,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    FsContext,
    umount2,
)
from overlayd.layout import ZRAM_LEFTOVERS, mount_source, runtime_dir_of
from overlayd.model import Upper, UpperKind, UpperUsage
from overlayd.mountinfo import MountInfo


class TmpfsUpper:
    kind = UpperKind.TMPFS

    def __init__(self, mounts: LinuxMounts | None = None) -> None:
        self.mounts = mounts or LinuxMounts()

    def plan(self, upper: Upper) -> Upper:
        return upper

    def owns(self, name: str, upper: Upper | None = None) -> Owned:
        """Our tmpfs carries our source string."""
        src = mount_source(name)
        return lambda m: m.source == src and m.fstype == "tmpfs"

    def make(self, name: str, target: str, upper: Upper) -> Upper:
        size = upper.size
        with map_os_errors(f"mount a tmpfs of {size} bytes at '{target}'", Op.MOUNT), \
                FsContext("tmpfs") as fc:
            fc.set_string("source", mount_source(name))
            fc.set_string("size", str(size))
            fc.set_string("mode", "0700")
            fc.create()
            fc.mount_at(target, MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID)
        return upper

    def unmake(self, name: str, target: str, upper: Upper, *, lazy: bool = False) -> bool:
        return self.mounts.unmount(target, self.owns(name), lazy=lazy)

    def resize(self, name: str, target: str, upper: Upper, size: int) -> Upper:
        """The tmpfs at TARGET limited to SIZE bytes from now on, its writes kept: its
        superblock reconfigured (fspick, fsconfig size=, FSCONFIG_CMD_RECONFIGURE: the new
        mount API's remount). The kernel refuses a size below what is used ("Too small a
        size for current use"); the caller checks first, to say it better."""
        if not top_owned(target, self.owns(name)):
            raise MountFailed(f"Cannot resize the RAM for the writes: no tmpfs of overlay "
                              f"'{name}' is mounted at '{target}'.")
        with map_os_errors(f"set the size of the tmpfs at '{target}' to {size} bytes",
                           Op.MOUNT), FsContext("tmpfs", picked=target) as fc:
            fc.set_string("size", str(size))
            fc.reconfigure()
        return upper.model_copy(update={"size": size})

    def detach_for_later(self, name: str, target: str,
                         upper: Upper | None = None) -> Callable[[], None]:
        """Detach the tmpfs at TARGET now, but free it later: an O_PATH fd keeps its
        superblock alive until the returned function closes it. Unmounting a tmpfs frees
        its pages synchronously (70 ms for 512 MiB), which a commit's caller need not wait
        for."""
        if not top_owned(target, self.owns(name)):
            return lambda: None
        with map_os_errors(f"detach '{target}'", Op.MOUNT):
            fd = os.open(target, os.O_PATH | os.O_CLOEXEC)
            try:
                umount2(target, MNT_DETACH)
            except BaseException:
                os.close(fd)
                raise

        def free() -> None:  # after the reply, in the background: nobody to tell
            with contextlib.suppress(OSError):
                os.close(fd)
        return free

    def usage(self, target: str, upper: Upper | None = None) -> UpperUsage:
        try:
            v = os.statvfs(target)
        except OSError as e:
            raise OverlaydError(f"Cannot read the usage of '{target}': {e.strerror}.") from None
        return UpperUsage(size=v.f_blocks * v.f_frsize, used=(v.f_blocks - v.f_bfree) * v.f_frsize,
                          inodes_used=v.f_files - v.f_ffree)


log = logging.getLogger("overlayd")

ZRAM_CONTROL = "/sys/class/zram-control"
SYS_BLOCK = "/sys/block"
FREE_WAIT = 10.0  # seconds: how long a device may stay busy after its last unmount
# After this long busy, look whether another mount namespace holds the device (a process
# that unshared its namespace while the upper was mounted keeps a copy of the mount): then
# it stays busy as long as that process lives, and waiting longer is of no use.
HELD_CHECK = 0.2
# A forced discard detaches lazily: a file still open in the overlay keeps the device busy
# until it is closed, which may be never. This long (a moment for the kernel to let go of
# a device nothing holds), then it is left for a later collect.
FORCED_WAIT = 1.0


class HeldElsewhere(Exception):
    """Not an overlayd error: the device is held by the mount namespaces of WHO (processes),
    which copied its mount. Handled here (the device is left for later), never reported."""

    def __init__(self, who: list[str]) -> None:
        super().__init__(", ".join(who))
        self.who = who


def _zram_id(device: str) -> int | None:
    """N of "/dev/zramN"; None for anything else."""
    base = os.path.basename(device)
    if device != f"/dev/{base}" or not base.startswith("zram") or not base[4:].isdigit():
        return None
    return int(base[4:])


def _sys(device_id: int, attr: str) -> str:
    return f"{SYS_BLOCK}/zram{device_id}/{attr}"


def _read_sys(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _write_sys(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _until_free(what: str, attempt: Callable[[], bool],
                held: Callable[[], list[str]] | None = None, limit: float = FREE_WAIT) -> None:
    """ATTEMPT until it says done: after the last unmount of a file system the kernel may
    hold its block device a moment longer (overlayfs's private clones of the layer mounts
    go from a work queue, udev's probe opens it). Each wait doubles, from 1 ms, and ends
    as soon as the device is free; after FREE_WAIT seconds it is an error. HELD, asked
    once after HELD_CHECK seconds: the processes whose mount namespaces hold the device
    (then HeldElsewhere at once: it will not be free before they end)."""
    start = time.monotonic()
    pause = 0.001
    asked = held is None
    while not attempt():
        waited = time.monotonic() - start
        if not asked and waited > min(HELD_CHECK, limit):
            asked = True
            assert held is not None
            who = held()
            if who:
                raise HeldElsewhere(who)
        if waited > limit:
            raise MountFailed(f"Cannot {what}: the device is still in use after "
                              f"{limit:.0f} s.")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _ext4_uuid(device: str) -> str | None:
    """The UUID in the ext4 superblock on DEVICE (offset 1024 + 0x68), None if none."""
    try:
        with open(device, "rb") as f:
            f.seek(1024)
            sb = f.read(0x78)
    except OSError:
        return None
    if len(sb) < 0x78 or sb[0x38:0x3A] != b"\x53\xef":
        return None
    return str(uuid.UUID(bytes=sb[0x68:0x78]))


def _has_signature(device: str) -> bool:
    """Whether DEVICE's first 64 KiB hold anything but zeros (a file system, swap, a
    partition table: what blkid would find)."""
    try:
        with open(device, "rb") as f:
            return any(f.read(65536))
    except OSError:
        return True  # unreadable: not provably blank


def _namespaces_mounting(zid: int) -> list[str]:
    """Processes (one per mount namespace) whose namespace has /dev/zramZID mounted: the
    failure path only (it reads every process's mountinfo)."""
    majmin = _read_sys(_sys(zid, "dev"))
    if majmin is None:
        return []
    seen: dict[str, str] = {}
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
            if ns in seen:
                continue
            with open(f"/proc/{pid}/mountinfo") as f:
                if any(line.split(" ", 3)[2] == majmin for line in f):
                    with open(f"/proc/{pid}/comm") as c:
                        seen[ns] = f"{c.read().strip()} (PID {pid})"
                else:
                    seen[ns] = ""
        except (OSError, IndexError):
            continue
    own = os.readlink("/proc/self/ns/mnt")
    return [who for ns, who in seen.items() if who and ns != own][:5]


def _try_remove(zid: int) -> bool:
    """Hot-remove /dev/zramZID: False while it is busy."""
    try:
        _write_sys(f"{ZRAM_CONTROL}/hot_remove", str(zid))
    except OSError as e:
        if e.errno == errno.EBUSY:
            return False
        if e.errno == errno.ENODEV:  # gone already
            return True
        raise MountFailed(f"Cannot remove /dev/zram{zid}: {e.strerror}.") from None
    return True


class ZramUpper:
    """ext4 without a journal on a zram device this daemon hot-added.

    Why ext4 without a journal: an overlay upper needs xattrs in the trusted namespace,
    whiteouts (0/0 character devices), RENAME_WHITEOUT and O_TMPFILE, which ext4 has; a
    journal would write every metadata change twice into compressed RAM for a crash
    safety that means nothing (RAM is gone at reboot). Mounted with ``discard``, deleted
    files give their RAM back to zram. xfs needs 300 MiB at least, btrfs copies on write.

    Ownership is the recorded device plus the recorded file system UUID (mkfs -U), never
    a mount's source string: a device is unmounted, formatted again or removed only when
    it is mounted at the overlay's own upper mount or carries the recorded UUID."""

    kind = UpperKind.ZRAM

    def __init__(self, mounts: LinuxMounts | None = None) -> None:
        self.mounts = mounts or LinuxMounts()

    def plan(self, upper: Upper) -> Upper:
        """The file system's UUID, chosen before anything exists: the first record has it,
        so a daemon killed once the device is mounted finds it at the upper mount."""
        return upper.model_copy(update={"fs_uuid": str(uuid.uuid4())})

    def owns(self, name: str, upper: Upper | None = None) -> Owned:
        """A zram device's ext4 that is the recorded device, or (a record saved before the
        device was known) carries the recorded UUID."""
        device = upper.device if upper is not None else ""
        fs_uuid = upper.fs_uuid if upper is not None else ""

        def owned(m: MountInfo) -> bool:
            zid = _zram_id(m.source)
            if zid is None or m.fstype != "ext4" or m.device != _read_sys(_sys(zid, "dev")):
                return False
            if device:
                return m.source == device
            return bool(fs_uuid) and _ext4_uuid(m.source) == fs_uuid
        return owned

    def _ours_unmounted(self, upper: Upper) -> int | None:
        """The recorded device's number if it exists and carries the recorded UUID."""
        zid = _zram_id(upper.device)
        if zid is None or not upper.fs_uuid or not os.path.exists(_sys(zid, "dev")):
            return None
        return zid if _ext4_uuid(upper.device) == upper.fs_uuid else None

    # A kill between hot_add and the record that names the device would leak it: make
    # notes it first in TARGET.zram (RUNTIME_DIR/NAME/rw.zram: "zramN UUID"), which
    # unmake reads when the record has no device, and removes.

    @staticmethod
    def _note(target: str, zid: int, fs_uuid: str) -> None:
        with map_os_errors(f"note /dev/zram{zid} in '{target}.zram'", Op.FILE), \
                open(target.rstrip("/") + ".zram", "w") as f:
            f.write(f"zram{zid} {fs_uuid}\n")

    @staticmethod
    def _noted(target: str, upper: Upper) -> int | None:
        """The device make noted for UPPER, if it is still the one make added: it carries
        UPPER's UUID, or is blank (no file system yet) with no size or UPPER's size."""
        words = (_read_sys(target.rstrip("/") + ".zram") or "").split()
        zid = _zram_id(f"/dev/{words[0]}") if len(words) == 2 else None
        if zid is None or not upper.fs_uuid or words[1] != upper.fs_uuid or \
                not os.path.exists(_sys(zid, "dev")):
            return None
        found = _ext4_uuid(f"/dev/zram{zid}")
        if found == upper.fs_uuid:
            return zid
        blank = found is None and not _has_signature(f"/dev/zram{zid}")
        return zid if blank and _read_sys(_sys(zid, "disksize")) in ("0", str(upper.size)) \
            else None

    @staticmethod
    def _forget_note(target: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target.rstrip("/") + ".zram")

    def make(self, name: str, target: str, upper: Upper) -> Upper:
        """A fresh file system at TARGET: on the recorded device if it is still ours (a
        commit renews the upper: mkfs discards the old blocks, which frees zram's RAM),
        else on a newly hot-added device, removed again if a later step fails."""
        zid = self._ours_unmounted(upper)
        if zid is not None:
            device = f"/dev/zram{zid}"
            self._mkfs(device, upper.fs_uuid, discard=True)
            self._mount(device, target)
            return upper
        self.collect(runtime_dir_of(target))  # give back what others held, first
        zid = self._hot_add()
        device = f"/dev/zram{zid}"
        fs_uuid = upper.fs_uuid or str(uuid.uuid4())
        try:
            # Before anything else: the record learns the device only when make returns,
            # and a blank device says nothing of whose it is.
            self._note(target, zid, fs_uuid)
            if upper.compressor:
                self._set_compressor(zid, upper.compressor)
            with map_os_errors(f"set the size of {device} to {upper.size} bytes", Op.MOUNT):
                _write_sys(_sys(zid, "disksize"), str(upper.size))
            self._mkfs(device, fs_uuid, discard=False)
            self._mount(device, target)
        except BaseException:
            # nothing was mounted yet, so no other namespace can hold it
            with contextlib.suppress(OverlaydError, HeldElsewhere):
                self._hot_remove(zid)
                self._forget_note(target)
            raise
        return upper.model_copy(update={"device": device, "fs_uuid": fs_uuid})

    def unmake(self, name: str, target: str, upper: Upper, *, lazy: bool = False) -> bool:
        """Unmount (if ours is mounted at TARGET) and remove the device (if ours). A device
        that another mount namespace holds (it copied the mount) cannot be removed while
        that namespace lives: it is left in RUNTIME_DIR/.zram-leftovers with its UUID and
        removed by a later ``collect``; the overlay goes all the same. So is one that LAZY
        (a forced discard) leaves busy with files still open in the detached mounts. Then
        the leftovers of earlier discards are tried once more."""
        owned = self.owns(name, upper)
        top = self.mounts.at(target)
        zid = _zram_id(top.source) if top is not None and owned(top) else None
        was = self.mounts.unmount(target, owned, lazy=lazy)
        if zid is None:
            zid = self._ours_unmounted(upper)
        if zid is None and not upper.device:
            zid = self._noted(target, upper)
        if zid is not None:
            try:
                self._hot_remove(zid, limit=FORCED_WAIT if lazy else FREE_WAIT)
            except HeldElsewhere as e:
                self._leave(runtime_dir_of(target), zid, upper.fs_uuid, name, e.who)
            except MountFailed:
                if not lazy:
                    raise
                # Forced (lazy): files still open in the detached overlay keep the device
                # busy for as long as they stay open; the overlay goes all the same.
                self._leave(runtime_dir_of(target), zid, upper.fs_uuid, name, [])
        self._forget_note(target)
        return was

    def collect(self, runtime_dir: str, *, wait: float = 0.0) -> list[str]:
        """Remove the leftover devices (``unmake``) that nothing holds any more: those that
        still carry the recorded UUID. An entry whose device is gone or carries another
        file system is dropped, the device untouched. One that is busy but mounted in no
        mount namespace any more is being let go (a copy detached when its mount point
        was removed): it is tried again for up to WAIT seconds. The devices removed."""
        where = os.path.join(runtime_dir, ZRAM_LEFTOVERS)
        try:
            entries = sorted(e for e in os.listdir(where) if not e.endswith(".tmp"))
        except OSError:
            return []
        removed = []
        for entry in entries:
            path = os.path.join(where, entry)
            zid = _zram_id(f"/dev/{entry}")
            recorded = _read_sys(path) or ""
            if zid is not None and os.path.exists(_sys(zid, "dev")) and recorded and \
                    _ext4_uuid(f"/dev/{entry}") == recorded:
                held = functools.partial(_namespaces_mounting, zid) if wait > 0 else None
                try:
                    _until_free(f"remove /dev/{entry}", functools.partial(_try_remove, zid),
                                held, limit=wait)
                except (HeldElsewhere, MountFailed):
                    continue  # still held: next time
                removed.append(f"/dev/{entry}")
                log.info("Removed /dev/%s, the zram device of a discarded overlay, held "
                         "until now (by another mount namespace, or files left open).", entry)
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            for entry in os.listdir(where):  # a kill while one was written
                if entry.endswith(".tmp"):
                    os.unlink(os.path.join(where, entry))
            os.rmdir(where)  # when empty
        return removed

    def _leave(self, runtime_dir: str, zid: int, fs_uuid: str, name: str,
               who: list[str]) -> None:
        """Note /dev/zramZID for a later ``collect`` (atomically: a kill leaves a .tmp,
        which collect drops) and say why it stays: held by the mount namespaces of WHO, or
        (none) by files open in a forced discard's detached mounts."""
        where = os.path.join(runtime_dir, ZRAM_LEFTOVERS)
        path = os.path.join(where, f"zram{zid}")
        with map_os_errors(f"note /dev/zram{zid} for a later removal", Op.FILE):
            os.makedirs(where, mode=0o700, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                f.write(fs_uuid + "\n")
            os.rename(path + ".tmp", path)
        held = (f"still mounted in another mount namespace (that of {', '.join(who)}), "
                "which copied it while it was mounted; it keeps the device and its RAM "
                "until that process ends") if who else (
                "still in use by files open in the overlay, which was detached by force; "
                "they keep the device and its RAM until they are closed")
        log.warning("Overlay '%s': its zram device /dev/zram%d is unmounted here but %s. The "
                    "overlay is discarded; overlayd removes the device at its next start or "
                    "zram create or discard after that.", name, zid, held,
                    extra={"OVERLAYD_NAME": name, "OVERLAYD_ZRAM_DEVICE": f"/dev/zram{zid}"})

    def resize(self, name: str, target: str, upper: Upper, size: int) -> Upper:
        raise MountFailed(f"Cannot resize the RAM for the writes of overlay '{name}': a zram "
                          "device's size cannot change while it holds data.")

    def detach_for_later(self, name: str, target: str,
                         upper: Upper | None = None) -> Callable[[], None]:
        """Unmount now (make formats the same device again): nothing to free later."""
        if upper is not None:
            self.mounts.unmount(target, self.owns(name, upper))
        return lambda: None

    def usage(self, target: str, upper: Upper | None = None) -> UpperUsage:
        u = TmpfsUpper.usage(TmpfsUpper(self.mounts), target)
        zid = _zram_id(upper.device) if upper is not None else None
        mm = (_read_sys(_sys(zid, "mm_stat")) or "").split() if zid is not None else []
        if len(mm) >= 3:
            u = u.model_copy(update={"original": int(mm[0]), "compressed": int(mm[2])})
        return u

    # -- the steps ---------------------------------------------------------------------

    def _hot_add(self) -> int:
        if not os.path.exists(ZRAM_CONTROL):
            raise MountFailed("Cannot use upper = 'zram': this kernel has no zram "
                              f"({ZRAM_CONTROL} is missing; modprobe zram num_devices=0).")
        # Reading hot_add makes a device: exactly one read.
        with map_os_errors("add a zram device", Op.MOUNT), \
                open(f"{ZRAM_CONTROL}/hot_add") as f:
            return int(f.read().strip())

    def _set_compressor(self, zid: int, name: str) -> None:
        try:
            _write_sys(_sys(zid, "comp_algorithm"), name)
        except OSError:
            offered = (_read_sys(_sys(zid, "comp_algorithm")) or "").replace("[", "")
            offered = offered.replace("]", "")
            raise MountFailed(f"The compressor '{name}' is not offered by this kernel's zram; "
                              f"it offers: {', '.join(offered.split())}.") from None

    def _mkfs(self, device: str, fs_uuid: str, *, discard: bool) -> None:
        # a device unmounted a moment ago may still be claimed: wait until it opens O_EXCL
        def free() -> bool:
            try:
                os.close(os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC))
            except OSError as e:
                if e.errno == errno.EBUSY:
                    return False
                raise MountFailed(f"Cannot open {device}: {e.strerror}.") from None
            return True
        try:
            _until_free(f"format {device}", free)
        except MountFailed:
            zid = _zram_id(device)
            where = _namespaces_mounting(zid) if zid is not None else []
            if not where:
                raise
            raise MountFailed(
                f"Cannot format {device} again: it is unmounted here but still mounted in "
                f"another mount namespace (that of {', '.join(where)}), which copied it "
                "while it was mounted.") from None
        # lazy_itable_init=0: the inode tables are written now, not by ext4lazyinit in the
        # background after the mount (zeros cost zram nothing: it keeps same-filled pages
        # as a number), so nothing works on the device but its users.
        argv = ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-U", fs_uuid,
                "-L", "overlayd-upper", "-E",
                ("discard" if discard else "nodiscard") + ",lazy_itable_init=0", device]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=300, check=False,
                                  env={"PATH": "/usr/sbin:/sbin:/usr/bin:/bin", "LC_ALL": "C"})
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MountFailed(f"Cannot run mkfs.ext4 on {device}: {e}.") from None
        if done.returncode != 0:
            raise MountFailed(f"mkfs.ext4 on {device} failed: "
                              f"{(done.stderr or done.stdout).strip()[:300]}.")

    def _mount(self, device: str, target: str) -> None:
        with map_os_errors(f"mount {device} at '{target}'", Op.MOUNT), \
                FsContext("ext4") as fc:
            fc.set_string("source", device)
            fc.set_flag("discard")
            fc.create()
            fc.mount_at(target, MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID)
        os.chmod(target, 0o700)

    def _hot_remove(self, zid: int, limit: float = FREE_WAIT) -> None:
        _until_free(f"remove /dev/zram{zid}", lambda: _try_remove(zid),
                    lambda: _namespaces_mounting(zid), limit=limit)


class Uppers:
    """The UpperBackend port: each call goes to the backend of the record's upper.kind."""

    def __init__(self, mounts: LinuxMounts | None = None) -> None:
        m = mounts or LinuxMounts()
        self.backends: dict[UpperKind, TmpfsUpper | ZramUpper] = {
            UpperKind.TMPFS: TmpfsUpper(m), UpperKind.ZRAM: ZramUpper(m)}

    def _of(self, upper: Upper | None) -> TmpfsUpper | ZramUpper:
        return self.backends[upper.kind if upper is not None else UpperKind.TMPFS]

    def plan(self, upper: Upper) -> Upper:
        return self._of(upper).plan(upper)

    def owns(self, name: str, upper: Upper | None = None) -> Owned:
        return self._of(upper).owns(name, upper)

    def make(self, name: str, target: str, upper: Upper) -> Upper:
        return self._of(upper).make(name, target, upper)

    def unmake(self, name: str, target: str, upper: Upper, *, lazy: bool = False) -> bool:
        return self._of(upper).unmake(name, target, upper, lazy=lazy)

    def resize(self, name: str, target: str, upper: Upper, size: int) -> Upper:
        return self._of(upper).resize(name, target, upper, size)

    def detach_for_later(self, name: str, target: str,
                         upper: Upper | None = None) -> Callable[[], None]:
        return self._of(upper).detach_for_later(name, target, upper)

    def usage(self, target: str, upper: Upper | None = None) -> UpperUsage:
        return self._of(upper).usage(target, upper)

    def collect(self, runtime_dir: str, *, wait: float = 0.0) -> list[str]:
        zram = self.backends[UpperKind.ZRAM]
        assert isinstance(zram, ZramUpper)
        return zram.collect(runtime_dir, wait=wait)
