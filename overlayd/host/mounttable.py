"""Ask the kernel about the few mounts overlayd cares about, not read the whole table.

- ``mount_at(path)``: the top mount whose mount point is PATH, or None. One statx(2)
  (which alone answers None for a path that is no mount root) and one statmount(2): about
  12 us, however many mounts the host has.
- ``mounts_below(path)``: the mounts at PATH (the whole stack) and below it. When PATH
  is a mount point: one listmount(2) of the lowest mount there (its kernel-side walk is
  linear but cheap, ~15 ns a mount) and a statmount(2) per mount found. When PATH is a
  plain directory, the mount holding it is listed and each mount below that one is asked
  for its mount point: linear in those mounts (~5 us each, no cheaper than mountinfo), so
  ask about mount points where you can.
- ``mounts_containing(path)``: the mount PATH is in and its parents up to our root (is
  PATH inside an overlay?), one statmount(2) a level.

Reading /proc/self/mountinfo instead costs about 4 us of parsing per mount on the host
(4 ms per call at 1,000 mounts).

The MountInfo values are equal to what the mountinfo parser reads for the same mounts
(``tests/kernel/test_mounttable.py`` compares them field by field):

- ``mount_id``/``parent_id`` are the old, reusable 32-bit ids (statmount's
  ``mnt_id_old``/``mnt_parent_id_old``), the first two fields of mountinfo. They are the
  ids /proc/PID/fdinfo reports as ``mnt_id:``, which ``holders.find_holders`` compares
  with, so ``{m.mount_id for m in mounts_below(target)}`` is what it wants. The unique
  64-bit ids (statx's STATX_MNT_ID_UNIQUE, statmount's ``mnt_id``) stay in this module.
- ``options`` are ro/rw and the per-mount flags, in mountinfo's order, from ``mnt_attr``.
- ``super_options`` are ro/rw and the superblock flags (``sb_flags``: sync, dirsync,
  mand, lazytime), then the filesystem's own options (``mnt_opts``, split on ',' and then
  octal-unescaped, as mountinfo's parser does).
- ``source`` is ``sb_source``, or "none" when the mount has none (as mountinfo says; a
  source set to the empty string reads "none" too, where mountinfo shows ""); ``fstype``
  is ``fs_type``, plus ``.subtype`` if any; ``root`` and ``target`` are ``mnt_root`` and
  ``mnt_point``, the latter relative to our root, like mountinfo.

PATH is resolved as the kernel resolves it for umount2(UMOUNT_NOFOLLOW): symlinks in its
directories are followed, a symlink as the last component is not, and what is found is
what path resolution reaches. So ``target`` is the kernel's mount point, which differs
from PATH when PATH goes through a symlink, and a mount hidden under one mounted later on
a parent directory is neither at nor below PATH (mountinfo still lists it; mounts_below
of a plain directory above both reports it). Mounts our root cannot reach (another
namespace through /proc/PID/root, outside a chroot) are not reported, as in mountinfo.

Without statmount(2)/listmount(2) (before Linux 6.8), without the fields used here or
a report of which are supported (before 6.15), or where a seccomp filter refuses them,
the same three answers come from /proc/self/mountinfo: the table is read and walked from
our root the way path resolution walks mounts, so they are the same answers.
"""

from __future__ import annotations

import errno
import os

from overlayd.host.syscalls import (
    AT_NO_AUTOMOUNT,
    AT_SYMLINK_NOFOLLOW,
    MOUNT_ATTR__ATIME,
    MOUNT_ATTR_IDMAP,
    MOUNT_ATTR_NOATIME,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NODIRATIME,
    MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_NOSYMFOLLOW,
    MOUNT_ATTR_RDONLY,
    SB_DIRSYNC,
    SB_LAZYTIME,
    SB_MANDLOCK,
    SB_RDONLY,
    SB_SYNCHRONOUS,
    STATMOUNT_FS_SUBTYPE,
    STATMOUNT_FS_TYPE,
    STATMOUNT_MNT_BASIC,
    STATMOUNT_MNT_OPTS,
    STATMOUNT_MNT_POINT,
    STATMOUNT_MNT_ROOT,
    STATMOUNT_SB_BASIC,
    STATMOUNT_SB_SOURCE,
    STATMOUNT_SUPPORTED_MASK,
    STATX_ATTR_MOUNT_ROOT,
    STATX_MNT_ID_UNIQUE,
    StatmountHead,
    listmount,
    statmount,
    statx,
)

# The one place that names the record type (it may move to overlayd.core.mountinfo).
from overlayd.mountinfo import MountInfo, parse, unescape

__all__ = ["MountInfo", "backend", "mount_at", "mounts_below", "mounts_containing"]

WANT = (STATMOUNT_SB_BASIC | STATMOUNT_MNT_BASIC | STATMOUNT_MNT_ROOT | STATMOUNT_MNT_POINT
        | STATMOUNT_FS_TYPE | STATMOUNT_FS_SUBTYPE | STATMOUNT_SB_SOURCE | STATMOUNT_MNT_OPTS)
_STATX_FLAGS = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT
_GONE = (errno.ENOENT, errno.ENOTDIR)  # no such path: nothing is mounted there
# statmount/listmount missing (ENOSYS), refused by a seccomp filter (EPERM, ENOSYS) or
# not knowing a flag we ask for (EINVAL): read mountinfo instead.
_UNAVAILABLE = (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP)

# mountinfo's per-mount options (fs/proc_namespace.c: show_mnt_opts), in its order. The
# atime mode is a 3-bit field: relatime is 0, strictatime shows nothing.
_MNT_FLAGS = ((MOUNT_ATTR_NOSUID, "nosuid"), (MOUNT_ATTR_NODEV, "nodev"),
              (MOUNT_ATTR_NOEXEC, "noexec"))
# Superblock flags mountinfo shows before the filesystem's options (show_sb_opts).
_SB_FLAGS = ((SB_SYNCHRONOUS, "sync"), (SB_DIRSYNC, "dirsync"), (SB_MANDLOCK, "mand"),
             (SB_LAZYTIME, "lazytime"))



def read_mounts(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    """The whole mount table: for the few who need all of it (recovery, leak checks)."""
    with open(path) as f:
        return parse(f.read())

def mount_options(mnt_attr: int) -> tuple[str, ...]:
    """statmount's mnt_attr as mountinfo's per-mount options field."""
    opts = ["ro" if mnt_attr & MOUNT_ATTR_RDONLY else "rw"]
    opts += [name for flag, name in _MNT_FLAGS if mnt_attr & flag]
    atime = mnt_attr & MOUNT_ATTR__ATIME
    if atime == MOUNT_ATTR_NOATIME:
        opts.append("noatime")
    if mnt_attr & MOUNT_ATTR_NODIRATIME:
        opts.append("nodiratime")
    if atime == 0:
        opts.append("relatime")
    if mnt_attr & MOUNT_ATTR_NOSYMFOLLOW:
        opts.append("nosymfollow")
    if mnt_attr & MOUNT_ATTR_IDMAP:
        opts.append("idmapped")
    return tuple(opts)


def super_options(sb_flags: int, mnt_opts: str) -> tuple[str, ...]:
    """statmount's sb_flags and mnt_opts as mountinfo's super options field: split first,
    then decode the octal escapes (the kernel escapes ',' inside a value)."""
    opts = ["ro" if sb_flags & SB_RDONLY else "rw"]
    opts += [name for flag, name in _SB_FLAGS if sb_flags & flag]
    if mnt_opts:
        opts += [unescape(o) for o in mnt_opts.split(",")]
    return tuple(opts)


def _string(strs: bytes, head: StatmountHead, flag: int, offset: int) -> str:
    if not head.mask & flag:
        return ""
    end = strs.find(b"\0", offset)
    return os.fsdecode(strs[offset:end if end >= 0 else len(strs)])


def from_statmount(head: StatmountHead, strs: bytes) -> MountInfo:
    """The MountInfo of one statmount(2) reply (asked with WANT)."""
    fstype = _string(strs, head, STATMOUNT_FS_TYPE, head.fs_type)
    subtype = _string(strs, head, STATMOUNT_FS_SUBTYPE, head.fs_subtype)
    return MountInfo(
        mount_id=head.mnt_id_old,
        parent_id=head.mnt_parent_id_old,
        device=f"{head.sb_dev_major}:{head.sb_dev_minor}",
        root=_string(strs, head, STATMOUNT_MNT_ROOT, head.mnt_root),
        target=_string(strs, head, STATMOUNT_MNT_POINT, head.mnt_point),
        options=mount_options(head.mnt_attr),
        fstype=f"{fstype}.{subtype}" if subtype else fstype,
        source=_string(strs, head, STATMOUNT_SB_SOURCE, head.sb_source) or "none",
        super_options=super_options(head.sb_flags,
                                    _string(strs, head, STATMOUNT_MNT_OPTS, head.mnt_opts)),
    )


# -- which way: statmount, or mountinfo -------------------------------------------------

_native: bool | None = None  # None: not probed yet


def _probe() -> bool:
    """statx reports unique mount ids and statmount supports every field we read."""
    try:
        stx = statx("/", _STATX_FLAGS, STATX_MNT_ID_UNIQUE)
        if not stx.stx_mask & STATX_MNT_ID_UNIQUE:
            return False  # before Linux 6.8: stx_mnt_id is the old id, if any
        head, _ = statmount(stx.stx_mnt_id, WANT | STATMOUNT_SUPPORTED_MASK)
    except OSError as e:
        if e.errno in _UNAVAILABLE:
            return False
        raise
    # Optional fields are left out of the mask when empty; only 6.15+ says which exist.
    return bool(head.mask & STATMOUNT_SUPPORTED_MASK) and head.supported_mask & WANT == WANT


def backend() -> str:
    """'statmount' or 'mountinfo': how this kernel is asked (probed once)."""
    global _native
    if _native is None:
        _native = _probe()
    return "statmount" if _native else "mountinfo"


def _force_backend(name: str | None) -> None:
    """For tests and benchmarks: 'statmount', 'mountinfo', or None to probe again."""
    global _native
    _native = None if name is None else name == "statmount"


# -- the syscall way ----------------------------------------------------------------------

class _Mount:
    """One statmount(2) reply: the unique ids beside the MountInfo."""
    __slots__ = ("info", "mnt_id", "parent_id")

    def __init__(self, head: StatmountHead, strs: bytes) -> None:
        self.mnt_id: int = head.mnt_id
        self.parent_id: int = head.mnt_parent_id
        self.info = from_statmount(head, strs)


def _stat(mnt_id: int) -> _Mount | None:
    """The mount with unique id MNT_ID; None if it is gone or our root cannot reach it."""
    try:
        head, strs = statmount(mnt_id, WANT)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    if not head.mask & STATMOUNT_MNT_POINT:
        return None  # not reachable from our root: mountinfo does not list it either
    return _Mount(head, strs)


def _mount_point(mnt_id: int) -> str | None:
    """Only the mount point of mount MNT_ID (a cheaper statmount, for filtering)."""
    try:
        head, strs = statmount(mnt_id, STATMOUNT_MNT_POINT)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return _string(strs, head, STATMOUNT_MNT_POINT, head.mnt_point) or None


def _holder(path: str) -> tuple[int, bool] | None:
    """(unique id of the mount PATH is in, whether PATH is its root); None: no PATH."""
    try:
        stx = statx(path, _STATX_FLAGS, STATX_MNT_ID_UNIQUE)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    return stx.stx_mnt_id, bool(stx.stx_attributes & STATX_ATTR_MOUNT_ROOT)


def _lookup(path: str, *, roots_only: bool = False) -> tuple[_Mount, bool] | None:
    """The mount PATH is in, as path resolution finds it (the top one at a mount point),
    and whether PATH is its root. ROOTS_ONLY: None at once when PATH is no mount root."""
    held = _holder(path)
    for _ in range(3):  # unmounted between statx and statmount: look again
        if held is None or (roots_only and not held[1]):
            return None
        mount = _stat(held[0])
        if mount is not None:
            return mount, held[1]
        again = _holder(path)
        if again == held:
            return None  # in another mount namespace (through /proc/PID/root)
        held = again
    return None


def _native_mount_at(path: str) -> MountInfo | None:
    found = _lookup(path, roots_only=True)
    return found[0].info if found else None


def _native_mounts_below(path: str) -> list[MountInfo]:
    found = _lookup(path)
    if found is None:
        return []
    holder, is_root = found
    if is_root:
        # Walk down the stack of mounts at PATH to the lowest: listmount of it reaches
        # every mount at or below PATH, those stacked on it included.
        bottom = holder
        while bottom.parent_id != bottom.mnt_id:
            parent = _stat(bottom.parent_id)
            if parent is None or parent.info.target != bottom.info.target:
                break
            bottom = parent
        return _below(bottom.mnt_id, bottom.info.target, {bottom.mnt_id: bottom.info})
    # PATH is no mount point: list the mount that holds it, keep mount points under PATH.
    return _below(holder.mnt_id, _resolve(path), {}, filter_first=True)


def _below(mnt_id: int, target: str, found: dict[int, MountInfo], *,
           filter_first: bool = False) -> list[MountInfo]:
    """FOUND and the mounts below mount MNT_ID whose mount point is TARGET or under it,
    in mountinfo's order (by unique id). FILTER_FIRST: most of them are not, so read only
    their mount points first."""
    prefix = target.rstrip("/") + "/"

    def wanted(where: str) -> bool:
        return where == target or where.startswith(prefix)

    try:
        ids = listmount(mnt_id)
    except OSError as e:
        if e.errno != errno.ENOENT:  # ENOENT: unmounted meanwhile
            raise
        ids = []
    for mid in ids:
        if mid in found:
            continue
        if filter_first:
            where = _mount_point(mid)
            if where is None or not wanted(where):
                continue
        mount = _stat(mid)
        if mount is not None and wanted(mount.info.target):
            found[mid] = mount.info
    return [found[k] for k in sorted(found)]


def _native_mounts_containing(path: str) -> list[MountInfo]:
    chain: list[MountInfo] = []
    found = _lookup(path)
    mount = found[0] if found else None
    while mount is not None and len(chain) < 4096:
        chain.append(mount.info)
        if mount.parent_id == mount.mnt_id:
            break
        mount = _stat(mount.parent_id)  # None above our root
    return chain


# -- the mountinfo way: the same answers from the whole table --------------------------------

def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _resolve(path: str) -> str:
    """PATH absolute, its directories' symlinks resolved, the last component kept."""
    path = os.path.abspath(path)
    head, tail = os.path.split(path)
    if not tail:
        return path
    return os.path.join(os.path.realpath(head), tail)


class _Table:
    """/proc/self/mountinfo as a tree, walked as path resolution walks mounts."""

    def __init__(self) -> None:
        self.mounts = read_mounts()
        self.by_id = {m.mount_id: m for m in self.mounts}
        self.children: dict[int, list[MountInfo]] = {}
        for m in self.mounts:
            if m.parent_id != m.mount_id and m.parent_id in self.by_id:
                self.children.setdefault(m.parent_id, []).append(m)

    def holder(self, where: str) -> MountInfo | None:
        """The mount path resolution of WHERE (resolved) ends in: from our root, into the
        first mount crossed on the way down (a stacked one before one on a subdirectory)."""
        roots = [m for m in self.mounts if m.target == "/" and m.parent_id not in self.by_id]
        if not roots:
            return None  # in a chroot that is no mount point
        mount = roots[0]
        while True:
            crossed = [c for c in self.children.get(mount.mount_id, ())
                       if _within(where, c.target)]
            if not crossed:
                return mount
            mount = min(crossed, key=lambda c: len(c.target))

    def subtree(self, top: MountInfo) -> list[MountInfo]:
        ids, todo = set(), [top]
        while todo:
            m = todo.pop()
            ids.add(m.mount_id)
            todo.extend(self.children.get(m.mount_id, ()))
        return [m for m in self.mounts if m.mount_id in ids]


def _fallback_mount_at(path: str) -> MountInfo | None:
    if not os.path.lexists(path):
        return None
    where = _resolve(path)
    table = _Table()
    holder = table.holder(where)
    if holder is None:  # no root to walk from: the last mount listed there
        found = [m for m in table.mounts if m.target == where]
        return found[-1] if found else None
    return holder if holder.target == where else None


def _fallback_mounts_below(path: str) -> list[MountInfo]:
    if not os.path.lexists(path):
        return []
    where = _resolve(path)
    table = _Table()
    holder = table.holder(where)
    if holder is None:
        return [m for m in table.mounts if _within(m.target, where)]
    if holder.target == where:
        bottom = holder
        while (parent := table.by_id.get(bottom.parent_id)) is not None \
                and parent.target == where:
            bottom = parent
        return table.subtree(bottom)
    return [m for m in table.subtree(holder) if _within(m.target, where)]


def _fallback_mounts_containing(path: str) -> list[MountInfo]:
    if not os.path.lexists(path):
        return []
    table = _Table()
    chain: list[MountInfo] = []
    mount = table.holder(_resolve(path))
    while mount is not None and mount not in chain:
        chain.append(mount)
        mount = table.by_id.get(mount.parent_id)
    return chain


# -- the API ----------------------------------------------------------------------------

def mount_at(path: str) -> MountInfo | None:
    """The top mount whose mount point is PATH, or None if PATH is no mount point (or
    does not exist)."""
    if backend() == "statmount":
        return _native_mount_at(path)
    return _fallback_mount_at(path)


def mounts_below(path: str) -> list[MountInfo]:
    """The mounts at PATH (the whole stack) and below it, in mountinfo's order; [] if PATH
    does not exist. Mounts hidden under a mount on PATH's directories are left out."""
    if backend() == "statmount":
        return _native_mounts_below(path)
    return _fallback_mounts_below(path)


def mounts_containing(path: str) -> list[MountInfo]:
    """The mount PATH is in (the top one, if PATH is a mount point), then its parent and
    so on up to our root: whether PATH is inside an overlay, say. [] if PATH does not
    exist."""
    if backend() == "statmount":
        return _native_mounts_containing(path)
    return _fallback_mounts_containing(path)
