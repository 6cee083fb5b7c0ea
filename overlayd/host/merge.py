"""Commit's core: apply an overlayfs upper layer to the lower file system, in place.

Runs only while the overlay is unmounted (changing layers under a live overlay is
undefined). One pass over the upper, depth first:

- a whiteout removes the lower path (recursively for a directory);
- an opaque directory replaces the lower directory wholesale;
- a type change (file <-> dir <-> symlink <-> device) removes, then creates;
- a regular file that replaces a lower file is written beside it under a temporary name
  and renamed over it, so no half-written file ever sits at its real name and lower hard
  links to the old inode keep the old content (as the merged view showed them);
- hard links made in the upper stay hard links; symlinks are never followed;
- sparse files keep their holes (SEEK_DATA/SEEK_HOLE);
- owner, mode (setuid, sticky), xattrs and ACLs (as system.posix_acl_* xattrs), then
  timestamps are set after the content, directories after their children.

Re-running it after a failure finishes the job: every step is idempotent, which is why
a failed or interrupted commit keeps the upper and can simply be tried again. A commit
killed mid-copy may leave a temporary ``.overlayd-commit-*`` file; the next commit removes
those from every image directory it touches before writing there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from overlayd.host.ovlformat import is_opaque, is_whiteout, list_xattrs, user_xattr

TMP_PREFIX = ".overlayd-commit-"
Progress = Callable[[int, int], None]  # (entries applied, bytes written)


ACL_DEFAULT = "system.posix_acl_default"


@dataclass(frozen=True)
class _Dir:
    """What a destination directory does to entries created in it: ``fresh`` (made by
    this commit, so nothing of the lower is in it), ``default_acl`` (new entries inherit
    ACL xattrs), ``setgid`` (new entries inherit its group)."""

    fresh: bool
    default_acl: bool
    setgid: bool

    @classmethod
    def existing(cls, path: str, st: os.stat_result) -> _Dir:
        return cls(False, ACL_DEFAULT in list_xattrs(path), bool(st.st_mode & stat.S_ISGID))

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


def apply_upper(upper: str, lower: str, progress: Progress | None = None) -> ApplyResult:
    """Apply UPPER onto LOWER. Raises ApplyError naming the path that failed."""
    ap = _Applier(upper, lower, progress)
    t0 = time.monotonic()
    try:
        ap.apply_dir("", _Dir.existing(lower, os.lstat(lower)))
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
    def __init__(self, upper: str, lower: str, progress: Progress | None) -> None:
        self.upper = upper
        self.lower = lower
        self.progress = progress
        self.result = ApplyResult()
        self.current = ""
        self._tmp_counter = 0
        self._euid, self._egid = os.geteuid(), os.getegid()

    def _tmp_beside(self, dst: str) -> str:
        self._tmp_counter += 1
        return os.path.join(os.path.dirname(dst), f"{TMP_PREFIX}{os.getpid()}-{self._tmp_counter}")

    def _tick(self, nbytes: int = 0) -> None:
        self.result.entries += 1
        self.result.bytes += nbytes
        if self.progress is not None:
            self.progress(self.result.entries, self.result.bytes)

    def apply_dir(self, rel: str, into: _Dir) -> None:
        if not into.fresh:
            _sweep_temporaries(os.path.join(self.lower, rel))
        src_dir = os.path.join(self.upper, rel)
        with os.scandir(src_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            self.apply_entry(os.path.join(rel, entry.name), entry.path, into)

    def apply_entry(self, rel: str, src: str, into: _Dir) -> None:
        self.current = rel
        dst = os.path.join(self.lower, rel)
        st = os.lstat(src)
        mode = st.st_mode
        if is_whiteout(src, st):
            if not into.fresh:
                remove_any(dst)
            self._tick()
            return
        dst_st = None if into.fresh else _lstat(dst)
        if stat.S_ISDIR(mode):
            self._apply_directory(rel, src, dst, st, dst_st, into)
        elif stat.S_ISREG(mode):
            self._apply_file(src, dst, st, dst_st, into)
        else:
            self._apply_special(src, dst, st, dst_st, into)

    def _apply_directory(self, rel: str, src: str, dst: str, st: os.stat_result,
                         dst_st: os.stat_result | None, into: _Dir) -> None:
        if dst_st is not None and (not stat.S_ISDIR(dst_st.st_mode) or is_opaque(src)):
            remove_any(dst)
            dst_st = None
        if dst_st is None:
            os.mkdir(dst, 0o700)
            inner = into.made_here()
        else:
            inner = _Dir.existing(dst, dst_st)
        self._tick()
        self.apply_dir(rel, inner)
        self.current = rel
        self.set_meta(src, dst, st, None, into if dst_st is None else None)

    def _apply_file(self, src: str, dst: str, st: os.stat_result,
                    dst_st: os.stat_result | None, into: _Dir) -> None:
        if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
            shutil.rmtree(dst)
            dst_st = None
        target = dst if dst_st is None else self._tmp_beside(dst)
        key = (st.st_dev, st.st_ino)
        first = self.result.links.get(key) if st.st_nlink > 1 else None
        if first is not None:  # another name of an inode already written: link, don't copy
            os.link(first, target)
            if target != dst:
                os.rename(target, dst)
            self._tick()
            return
        nbytes = 0
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                nbytes = copy_data(sfd, fd, st)
            finally:
                os.close(sfd)
            self.set_meta(src, target, st, fd, into)
        except BaseException:
            os.close(fd)
            _unlink_quietly(target)  # ours (O_EXCL): no half-written file stays behind
            raise
        os.close(fd)
        if target != dst:
            os.rename(target, dst)
        if st.st_nlink > 1:
            self.result.links[key] = dst
        self._tick(nbytes)

    def _apply_special(self, src: str, dst: str, st: os.stat_result,
                       dst_st: os.stat_result | None, into: _Dir) -> None:
        if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
            shutil.rmtree(dst)
            dst_st = None
        target = dst if dst_st is None else self._tmp_beside(dst)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), target)
        else:  # fifo, socket, char or block device
            os.mknod(target, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
        try:
            self.set_meta(src, target, st, None, into)
        except BaseException:
            if target != dst:
                _unlink_quietly(target)
            raise
        if target != dst:
            os.rename(target, dst)
        self._tick()

    def set_meta(self, src: str, dst: str, st: os.stat_result, fd: int | None,
                 created_in: _Dir | None) -> None:
        """Owner, then xattrs (ACLs, capabilities), then mode, then times: chown clears
        setuid bits and security.capability, and the mode must win over the ACL mask.

        CREATED_IN is the directory DST was just created in (None for an existing DST):
        a new entry already has our uid, and our gid unless that directory is setgid,
        and has no xattrs unless that directory has a default ACL. Skipping what is
        already right saves two syscalls per small file."""
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
        self._sync_xattrs(src, ref, may_have_extra=created_in is None or created_in.default_acl)
        if not is_link:
            if fd is not None:
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            else:
                os.chmod(dst, stat.S_IMODE(st.st_mode))
        times = (st.st_atime_ns, st.st_mtime_ns)
        if fd is not None:
            os.utime(fd, ns=times)
        else:
            os.utime(dst, ns=times, follow_symlinks=False)

    def _sync_xattrs(self, src: str, ref: str | int, *, may_have_extra: bool) -> None:
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


def copy_data(sfd: int, dfd: int, st: os.stat_result) -> int:
    """Copy a regular file's content, keeping holes; returns bytes written."""
    size = st.st_size
    if size == 0:
        return 0
    if st.st_blocks * 512 >= size:  # not sparse: one straight copy
        return _sendfile(sfd, dfd, 0, size)
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
        written += _sendfile(sfd, dfd, data, hole - data)
        pos = hole
    os.ftruncate(dfd, size)
    return written


def _sendfile(sfd: int, dfd: int, offset: int, count: int) -> int:
    done = 0
    while done < count:
        n = os.sendfile(dfd, sfd, offset + done, min(count - done, 1 << 30))
        if n == 0:
            break
        done += n
    return done


def _sweep_temporaries(directory: str) -> None:
    """Remove what an earlier commit, killed mid-copy, left under a temporary name."""
    with os.scandir(directory) as it:
        stale = [e.path for e in it if e.name.startswith(TMP_PREFIX)]
    for path in stale:
        remove_any(path)


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
