"""Commit's core: apply an overlayfs upper layer to the lower file system, in place.

Runs only while the overlay is unmounted (changing layers under a live overlay is
undefined). One pass over the upper, depth first:

- a whiteout removes the lower path (recursively for a directory);
- an opaque directory replaces the lower directory wholesale;
- a type change (file <-> dir <-> symlink <-> device) replaces the entry;
- hard links made in the upper stay hard links; symlinks are never followed;
- a regular file that replaces a lower one gets a new inode, so lower hard links to the
  old inode keep the old content (as the merged view showed them);
- sparse files keep their holes (SEEK_DATA/SEEK_HOLE);
- owner, mode (setuid, sticky), xattrs and ACLs (as system.posix_acl_* xattrs), then
  timestamps are set after the content, directories after their children.

What a kill -9 in the middle leaves in the image (the kernel keeps running, so all that
was written stays, in the page cache at least). No entry is ever seen half-made under its
real name:

- **regular file, new or replaced**: written as an anonymous O_TMPFILE inode in the
  destination directory, completed there (data, owner, xattrs, mode, times), then
  linked in: straight to its real name when that is free (linkat is atomic), else to a
  temporary name renamed over the old entry. Killed before that, the inode has no name
  and the kernel frees it when the killed process's descriptors close; killed between
  the link and the rename, a complete file sits under a temporary name, which the next
  commit sweeps. Where O_TMPFILE is not supported, the file is written under a
  temporary name instead (swept the same way).
- **another name of a hard-linked file**: link() to a free name is atomic; to replace,
  link under a temporary name and rename.
- **symlink, fifo, socket, device node**: made under a temporary name, finished, renamed
  into place.
- **new directory, or one replacing another entry** (opaque directory, type change): built
  whole, children included, under a temporary name, then renamed into place; when an
  entry is in the way it is swapped in with RENAME_EXCHANGE and the old entry, now
  under the temporary name, removed. Inside such a directory entries are made under
  their real names: nobody sees them before the directory is renamed. Killed before
  the swap: the old entry is intact and the new tree sits under a temporary name
  (swept); after it: the new tree is in place and what is left of the old one sits
  under a temporary name (swept). A file system without RENAME_EXCHANGE gets two
  renames instead, and a kill between them leaves neither entry at the real name
  (the next commit puts the new one there).
- **whiteout**: a file is unlinked (atomic); a directory is first renamed to a temporary
  name (it disappears at once) and then removed, so a kill never leaves it half-emptied
  under its real name.
- **a directory that stays** (not opaque): its entries are applied one by one, each as
  above, and its owner, xattrs, mode and times last, one call each. Killed part-way,
  some entries are new and some old, and the directory's attributes may be partly set.

So a killed commit leaves a *half-committed* image: every entry is wholly old or wholly
new, but not all entries are new yet. It is not a consistent snapshot of either side,
which is why the engine records that the commit was interrupted. Re-running it over the
same upper finishes the job: every step is idempotent (an entry already applied is
simply applied again), which is why a failed or interrupted commit keeps the upper and
can be tried again.

Progress and cancelling. ``progress(entries, bytes)`` is called after each entry, and
every ``CHUNK`` bytes while a large file is copied (that file is not counted as an entry
yet). Both are safe points: an exception raised by ``progress`` (``Cancelled``, when a
job is cancelled) stops the apply there, and every entry is wholly old or wholly new as
after a kill, with less left behind: the file being copied has no name yet (an
``O_TMPFILE`` inode, freed when its fd closes) or a temporary name this process removes,
and a directory being built under a temporary name is removed too.

A power cut is another matter: nothing here calls fsync per file (that would cost most
of the throughput), so the file system may persist a name before the data behind it;
the caller's syncfs at the end of a commit is what makes the whole of it durable.

Temporary names are ``.overlayd-commit-<I>-<token>-<n>``, where I is the inode number of
the directory they are in: the sweep, which runs in every image directory a commit
visits before it writes there, removes only names of that form whose I is that
directory's own inode number, so a user's file never matches by accident. It also
removes regular files named ``.overlayd-commit-<pid>-<n>``, the temporaries of earlier
versions.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from overlayd.host.ovlformat import (
    is_marker,
    is_opaque,
    is_whiteout,
    list_xattrs,
    user_xattr,
)

log = logging.getLogger(__name__)

TMP_PREFIX = ".overlayd-commit-"
_TMP_NAME = re.compile(r"\.overlayd-commit-([0-9]+)-[0-9a-f]{8}-[0-9]+\Z")
_LEGACY_TMP_NAME = re.compile(r"\.overlayd-commit-[0-9]+-[0-9]+\Z")
Progress = Callable[[int, int], None]  # (entries applied, bytes written)
# Within a large file, progress is reported (and a cancel honoured) every CHUNK bytes.
CHUNK = 64 << 20
# Called with a short label before each change to the image; tests use it to stop the
# applier at every point (raise, or os._exit in a child process).
FaultHook = Callable[[str], None]

ACL_DEFAULT = "system.posix_acl_default"
ACL_ACCESS = "system.posix_acl_access"
_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_AT_EMPTY_PATH = 0x1000
_RENAME_EXCHANGE = 1 << 1
_libc = ctypes.CDLL(None, use_errno=True)
_linkat = _libc.linkat
_renameat2 = getattr(_libc, "renameat2", None)


@dataclass(frozen=True)
class _Dir:
    """What a destination directory does to entries created in it: ``fresh`` (made by
    this commit, so nothing of the lower is in it and nobody sees it yet), ``default_acl``
    (new entries inherit ACL xattrs), ``setgid`` (new entries inherit its group), ``ino``
    (its inode number, which names its temporaries; 0 for a fresh one, which has none)."""

    fresh: bool
    default_acl: bool
    setgid: bool
    ino: int = 0

    @classmethod
    def existing(cls, path: str, st: os.stat_result) -> _Dir:
        return cls(False, ACL_DEFAULT in list_xattrs(path), bool(st.st_mode & stat.S_ISGID),
                   st.st_ino)

    def made_here(self) -> _Dir:
        """A directory mkdir'ed inside this one inherits its default ACL and setgid."""
        return _Dir(True, self.default_acl, self.setgid)


@dataclass
class ApplyResult:
    entries: int = 0
    bytes: int = 0
    seconds: float = 0.0
    links: dict[tuple[int, int], str] = field(default_factory=dict)


class ApplyError(Exception):
    """An OSError while applying, with the upper-relative path it happened at."""

    def __init__(self, cause: OSError, relpath: str, done: ApplyResult) -> None:
        super().__init__(f"{relpath}: {cause.strerror}")
        self.cause = cause
        self.relpath = relpath
        self.done = done


def apply_upper(upper: str, lower: str, progress: Progress | None = None, *,
                fault: FaultHook | None = None) -> ApplyResult:
    """Apply UPPER onto LOWER. Raises ApplyError naming the path that failed."""
    ap = _Applier(upper, lower, progress, fault)
    t0 = time.monotonic()
    try:
        ap.apply_dir("", lower, _Dir.existing(lower, os.stat(lower)))
        ap.current = ""
        ap.step("meta")
        ap.set_meta(upper, lower, os.lstat(upper), None, None)
    except OSError as e:
        ap.result.seconds = time.monotonic() - t0
        raise ApplyError(e, "/" + ap.current, ap.result) from e
    ap.result.seconds = time.monotonic() - t0
    return ap.result


def remove_any(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


class _Applier:
    def __init__(self, upper: str, lower: str, progress: Progress | None,
                 fault: FaultHook | None) -> None:
        self.upper = upper
        self.lower = lower
        self.progress = progress
        self.fault = fault
        self.result = ApplyResult()
        self.current = ""
        # no `secrets`: it loads hashlib and libcrypto, which the exitrd would carry
        self._token = os.urandom(4).hex()
        self._tmp_counter = 0
        self._euid, self._egid = os.geteuid(), os.getegid()
        self._tmpfile = True  # until the file system says it has no O_TMPFILE
        self._flink = True  # linkat(fd, "", AT_EMPTY_PATH) works (else /proc/self/fd/N)
        self._umask = _umask()
        # (real path, temporary path) of the directory being built under a temporary
        # name: hard links to files inside it must go through the temporary path.
        self._staged: tuple[str, str] | None = None

    def step(self, what: str) -> None:
        if self.fault is not None:
            self.fault(what)

    def _tmp_in(self, directory: str, into: _Dir) -> str:
        assert not into.fresh, "a fresh directory needs no temporaries"
        self._tmp_counter += 1
        return os.path.join(directory,
                            f"{TMP_PREFIX}{into.ino}-{self._token}-{self._tmp_counter}")

    def _where_now(self, path: str) -> str:
        """PATH (where an entry will be) as it can be reached now."""
        if self._staged is not None:
            real, tmp = self._staged
            if path == real or path.startswith(real + "/"):
                return tmp + path[len(real):]
        return path

    def _tick(self, nbytes: int = 0) -> None:
        self.result.entries += 1
        self.result.bytes += nbytes
        if self.progress is not None:
            self.progress(self.result.entries, self.result.bytes)

    def _partial(self, nbytes: int) -> None:
        """NBYTES of the file being copied are written; it is not an entry yet."""
        if self.progress is not None:
            self.progress(self.result.entries, self.result.bytes + nbytes)

    def apply_dir(self, rel: str, path: str, into: _Dir) -> None:
        """Apply the upper directory REL to the image directory at PATH."""
        if not into.fresh:
            _sweep_temporaries(path, into.ino, self.step)
        src_dir = os.path.join(self.upper, rel)
        with os.scandir(src_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if is_marker(entry.name):  # fuse-overlayfs' opaque markers (ovlformat.py)
                continue
            self.apply_entry(os.path.join(rel, entry.name), entry.path,
                             os.path.join(path, entry.name), into)

    def apply_entry(self, rel: str, src: str, dst: str, into: _Dir) -> None:
        self.current = rel
        st = os.lstat(src)
        mode = st.st_mode
        if is_whiteout(src, st):
            if not into.fresh:
                self._remove(dst, into)
            self._tick()
            return
        dst_st = None if into.fresh else _lstat(dst)
        if stat.S_ISDIR(mode):
            self._apply_directory(rel, src, dst, st, dst_st, into)
        elif stat.S_ISREG(mode):
            self._apply_file(rel, src, dst, st, dst_st, into)
        else:
            self._apply_special(src, dst, st, dst_st, into)

    # -- putting a finished entry in place -----------------------------------------------

    def _remove(self, dst: str, into: _Dir) -> None:
        """Remove DST; a directory disappears at once (renamed away, then emptied)."""
        dst_st = _lstat(dst)
        if dst_st is None:
            return
        self.step("remove")
        if not stat.S_ISDIR(dst_st.st_mode):
            os.unlink(dst)
            return
        gone = self._tmp_in(os.path.dirname(dst), into)
        os.rename(dst, gone)
        self.step("remove old")
        shutil.rmtree(gone)

    def _install(self, tmp: str, dst: str, dst_st: os.stat_result | None, into: _Dir, *,
                 tmp_is_dir: bool = False) -> None:
        """Put the finished entry TMP at DST in one step, replacing what DST was."""
        self.step("install")
        if dst_st is None or not (tmp_is_dir or stat.S_ISDIR(dst_st.st_mode)):
            os.rename(tmp, dst)  # atomic, also over a non-directory
            return
        # A directory is involved: rename() cannot replace a non-empty directory or put
        # a directory over a file, so swap the two, then remove the old one.
        if _exchange(tmp, dst):
            self.step("remove old")
            remove_any(tmp)
            return
        old = self._tmp_in(os.path.dirname(dst), into)  # no RENAME_EXCHANGE here
        os.rename(dst, old)
        self.step("install after removal")
        os.rename(tmp, dst)
        self.step("remove old")
        remove_any(old)

    # -- each kind of entry ---------------------------------------------------------------

    def _apply_directory(self, rel: str, src: str, dst: str, st: os.stat_result,
                         dst_st: os.stat_result | None, into: _Dir) -> None:
        if dst_st is not None and stat.S_ISDIR(dst_st.st_mode) and not is_opaque(src):
            self._tick()  # merged into the directory that is there
            self.apply_dir(rel, dst, _Dir.existing(dst, dst_st))
            self.current = rel
            self.step("meta")
            self.set_meta(src, dst, st, None, None)
            return
        if into.fresh:  # inside a directory being built: nobody sees it yet
            self.step("mkdir")
            os.mkdir(dst, 0o700)
            self._tick()
            self.apply_dir(rel, dst, into.made_here())
            self.current = rel
            self.set_meta(src, dst, st, None, into)
            return
        tmp = self._tmp_in(os.path.dirname(dst), into)
        self.step("mkdir")
        os.mkdir(tmp, 0o700)
        self._staged = (dst, tmp)
        try:
            self._tick()
            self.apply_dir(rel, tmp, into.made_here())
            self.current = rel
            self.step("meta")
            self.set_meta(src, tmp, st, None, into)
        except BaseException:
            self._staged = None
            with contextlib.suppress(OSError):
                remove_any(tmp)  # else the next commit sweeps it
            raise
        self._staged = None
        self._install(tmp, dst, dst_st, into, tmp_is_dir=True)

    def _apply_file(self, rel: str, src: str, dst: str, st: os.stat_result,
                    dst_st: os.stat_result | None, into: _Dir) -> None:
        key = (st.st_dev, st.st_ino)
        first = self.result.links.get(key) if st.st_nlink > 1 else None
        if first is not None:  # another name of an inode already written: link, don't copy
            self._link_in(self._where_now(first), dst, dst_st, into)
            self._tick()
            return
        if into.fresh:
            nbytes = self._write_new(src, dst, st, into, hidden=True)
        else:
            nbytes = self._write_replacing(src, dst, st, dst_st, into)
        if st.st_nlink > 1:
            self.result.links[key] = os.path.join(self.lower, rel)
        self._tick(nbytes)

    def _link_in(self, existing: str | int, dst: str, dst_st: os.stat_result | None,
                 into: _Dir) -> None:
        """Give EXISTING (a path, or the fd of an O_TMPFILE inode) the name DST."""
        self.step("link")
        if dst_st is None:
            self._link(existing, dst)  # atomic: the name is free
            return
        tmp = self._tmp_in(os.path.dirname(dst), into)
        self._link(existing, tmp)
        self._install(tmp, dst, dst_st, into)

    def _link(self, existing: str | int, new: str) -> None:
        if isinstance(existing, str):
            os.link(existing, new)
        elif not (self._flink and _linkat(existing, b"", _AT_FDCWD, os.fsencode(new),
                                          _AT_EMPTY_PATH) == 0):
            if self._flink and ctypes.get_errno() not in (errno.EPERM, errno.ENOENT):
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), None, None, new)
            # Not allowed without CAP_DAC_READ_SEARCH before Linux 6.10: the magic link.
            self._flink = False
            if _linkat(_AT_FDCWD, os.fsencode(f"/proc/self/fd/{existing}"), _AT_FDCWD,
                       os.fsencode(new), _AT_SYMLINK_FOLLOW) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), None, None, new)

    def _create_mode(self, st: os.stat_result, into: _Dir) -> int | None:
        """The mode to create a file with so that it needs no chmod afterwards, if any:
        the umask (or a default ACL) must leave it alone, and open() sets no setuid,
        setgid or sticky bit."""
        mode = stat.S_IMODE(st.st_mode)
        if self._umask is None or into.default_acl or mode & ~0o777 or mode & self._umask:
            return None
        return mode

    def _write_new(self, src: str, dst: str, st: os.stat_result, into: _Dir, *,
                   hidden: bool) -> int:
        """Write the file at DST, a free name: one nobody sees yet (HIDDEN, in a directory
        being built), or a temporary name."""
        mode = self._create_mode(st, into) if hidden else None
        self.step("create")
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600 if mode is None else mode)
        try:
            nbytes = self._fill(src, dst, st, fd, into, mode_ok=mode is not None)
        except BaseException:
            os.close(fd)
            _unlink_quietly(dst)  # ours (O_EXCL): no half-written file stays behind
            raise
        os.close(fd)
        return nbytes

    def _write_replacing(self, src: str, dst: str, st: os.stat_result,
                         dst_st: os.stat_result | None, into: _Dir) -> int:
        """Write the file as an anonymous inode beside DST, then give it DST's name."""
        directory = os.path.dirname(dst)
        fd = -1
        mode = self._create_mode(st, into)
        if self._tmpfile:
            self.step("create")
            try:
                fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC,
                             0o600 if mode is None else mode)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._tmpfile = False  # this file system has no O_TMPFILE
        if fd < 0:
            tmp = self._tmp_in(directory, into)
            nbytes = self._write_new(src, tmp, st, into, hidden=False)
            self._install(tmp, dst, dst_st, into)
            return nbytes
        try:
            nbytes = self._fill(src, dst, st, fd, into, mode_ok=mode is not None)
            self._link_in(fd, dst, dst_st, into)
        finally:
            os.close(fd)  # if it was never linked, this frees the inode
        return nbytes

    def _fill(self, src: str, dst: str, st: os.stat_result, fd: int, into: _Dir, *,
              mode_ok: bool) -> int:
        self.step("write")
        sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            nbytes = copy_data(sfd, fd, st, self._partial if self.progress else None)
        finally:
            os.close(sfd)
        self.step("meta")
        self.set_meta(src, dst, st, fd, into, mode_ok=mode_ok)
        return nbytes

    def _apply_special(self, src: str, dst: str, st: os.stat_result,
                       dst_st: os.stat_result | None, into: _Dir) -> None:
        target = dst if into.fresh else self._tmp_in(os.path.dirname(dst), into)
        self.step("create")
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), target)
        else:  # fifo, socket, char or block device
            os.mknod(target, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
        try:
            self.step("meta")
            self.set_meta(src, target, st, None, into)
        except BaseException:
            _unlink_quietly(target)
            raise
        if target != dst:
            self._install(target, dst, dst_st, into)
        self._tick()

    def set_meta(self, src: str, dst: str, st: os.stat_result, fd: int | None,
                 created_in: _Dir | None, *, mode_ok: bool = False) -> None:
        """Owner, then xattrs (ACLs, capabilities), then mode, then times: chown clears
        setuid bits and security.capability, and the mode must win over the ACL mask.

        CREATED_IN is the directory DST was just created in (None for an existing DST):
        a new entry already has our uid, and our gid unless that directory is setgid,
        and has no xattrs unless that directory has a default ACL. MODE_OK: it was
        created with its mode (an access ACL set here would still change it). Skipping
        what is already right saves three syscalls per small file."""
        is_link = stat.S_ISLNK(st.st_mode)
        ref: str | int = fd if fd is not None else dst
        owner_ok = created_in is not None and not created_in.setgid and \
            (st.st_uid, st.st_gid) == (self._euid, self._egid)
        if owner_ok:
            pass
        elif fd is not None:
            os.fchown(fd, st.st_uid, st.st_gid)
        else:
            os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        acl = self._sync_xattrs(src, ref,
                                may_have_extra=created_in is None or created_in.default_acl)
        if not is_link and (acl or not mode_ok):
            if fd is not None:
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            else:
                os.chmod(dst, stat.S_IMODE(st.st_mode))
        times = (st.st_atime_ns, st.st_mtime_ns)
        if fd is not None:
            os.utime(fd, ns=times)
        else:
            os.utime(dst, ns=times, follow_symlinks=False)

    def _sync_xattrs(self, src: str, ref: str | int, *, may_have_extra: bool) -> bool:
        """Make REF's xattrs SRC's; whether an access ACL was among them."""
        wanted = [n for n in list_xattrs(src) if user_xattr(n)]
        if may_have_extra:
            for name in list_xattrs(ref):  # e.g. an ACL inherited from the parent's default
                if user_xattr(name) and name not in wanted:
                    _remove_xattr(ref, name)
        for name in wanted:
            value = os.getxattr(src, name, follow_symlinks=False)
            if isinstance(ref, int):
                os.setxattr(ref, name, value)
            else:
                os.setxattr(ref, name, value, follow_symlinks=False)
        return ACL_ACCESS in wanted


def copy_data(sfd: int, dfd: int, st: os.stat_result,
              progress: Callable[[int], None] | None = None) -> int:
    """Copy a regular file's content, keeping holes; returns bytes written. PROGRESS, if
    given, is told the bytes written so far every CHUNK bytes (not at the end)."""
    size = st.st_size
    if size == 0:
        return 0
    if st.st_blocks * 512 >= size:  # not sparse: one straight copy
        return _sendfile(sfd, dfd, 0, size, progress)
    written, pos = 0, 0
    while pos < size:
        try:
            data = os.lseek(sfd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        hole = os.lseek(sfd, data, os.SEEK_HOLE)
        os.lseek(dfd, data, os.SEEK_SET)
        written += _sendfile(sfd, dfd, data, hole - data, progress, written)
        pos = hole
    os.ftruncate(dfd, size)
    return written


def _sendfile(sfd: int, dfd: int, offset: int, count: int,
              progress: Callable[[int], None] | None = None, before: int = 0) -> int:
    done = 0
    step = CHUNK if progress is not None else 1 << 30
    while done < count:
        n = os.sendfile(dfd, sfd, offset + done, min(count - done, step))
        if n == 0:
            break
        done += n
        if progress is not None and done < count:
            progress(before + done)
    return done


def is_temporary(name: str, directory_ino: int, entry: os.DirEntry[str] | None = None) -> bool:
    """Whether NAME, in the directory whose inode number is DIRECTORY_INO, is a temporary
    a killed commit left (ENTRY, when given, tells a regular file for the old form)."""
    if not name.startswith(TMP_PREFIX):
        return False
    m = _TMP_NAME.match(name)
    if m is not None:
        return int(m.group(1)) == directory_ino
    return _LEGACY_TMP_NAME.match(name) is not None and \
        (entry is None or entry.is_file(follow_symlinks=False))


def _sweep_temporaries(directory: str, directory_ino: int, step: FaultHook) -> None:
    """Remove what an earlier commit, killed part-way, left under a temporary name."""
    with os.scandir(directory) as it:
        stale = [e.path for e in it if is_temporary(e.name, directory_ino, e)]
    for path in stale:
        step("sweep")
        remove_any(path)


def _umask() -> int | None:
    """This process's umask, read without changing it (os.umask would, for all threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def _exchange(a: str, b: str) -> bool:
    """Swap A and B atomically; False where the file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _remove_xattr(ref: str | int, name: str) -> None:
    try:
        if isinstance(ref, int):
            os.removexattr(ref, name)
        else:
            os.removexattr(ref, name, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.EPERM, errno.ENOTSUP):
            raise
        if e.errno == errno.EPERM:  # an LSM keeps it (say, a security label): it stays
            log.info("Cannot remove the attribute %s of '%s' in the image: %s, ignoring.",
                     name, ref if isinstance(ref, str) else f"fd {ref}", e.strerror)
