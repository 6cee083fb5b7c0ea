"""Layer files (issue 14): an upper written as a read-only erofs or squashfs image by
``mkfs.erofs`` or ``mksquashfs``, whole or not at all.

What goes in is the upper as overlayfs wrote it, so that, stacked as a middle lower, the
layer shows exactly what the merged view showed (``../shared/research/anchors-2.md``
B9, B10, F Q4): whiteouts (character devices 0/0, hard-linked or not; zero-size files
with ``trusted.overlay.whiteout``), opaque directories (``trusted.overlay.opaque``),
escaped names (``trusted.overlay.overlay.*``, which the kernel shows unescaped), and every
other xattr, owner, mode, time, device and link. Both tools keep every
``trusted.overlay.*`` xattr they find (measured: erofs-utils 1.5 has no
``--ovlfs-strip``, mksquashfs 4.5.1 no ``-xattrs-exclude``), so the overlay's private
bookkeeping (``origin``, ``impure``, ``nlink``, ``upper``, ``uuid``, ``metacopy``,
``redirect``, ...: pointers into layers that mean nothing elsewhere) is removed from the
upper first. The upper is not mounted then (a commit unmounted the overlay), and the
kernel needs none of it back: with ``index=off,redirect_dir=off,metacopy=off`` it only
keeps inode numbers of copied-up files stable, which a remount over the same upper may
renumber.

squashfs stores xattrs of the ``user.``, ``trusted.`` and ``security.`` namespaces only: an
upper with ACLs (``system.posix_acl_*``) is refused before anything is written (the tool
would drop them silently, and a dropped ACL can widen access). It also keeps mtimes in
whole seconds only; erofs keeps nanoseconds.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable

from overlayd.errors import Cancelled, CommitFailed, NoSpace
from overlayd.host.guard import set_death_signal
from overlayd.host.ovlformat import FUSE_PREFIX, is_marker
from overlayd.host.ports import Applied

PRIVATE_PREFIX = "trusted.overlay."
# The overlayfs format itself: what a lower layer must keep to mean the same.
KEPT = frozenset({"trusted.overlay.opaque", "trusted.overlay.whiteout",
                  "trusted.overlay.whiteouts"})
ESCAPED_PREFIX = "trusted.overlay.overlay."
IMPURE = "trusted.overlay.impure"  # on a directory holding entries with origin
SQUASHFS_PREFIXES = ("user.", "trusted.", "security.")
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"
EXTENSIONS = {"erofs": ".erofs", "squashfs": ".sqfs"}
POLL = 0.05  # seconds between two looks at a cancel while the tool runs


def temporary(path: str) -> str:
    """PATH's temporary name: hidden, in the same directory (one rename away)."""
    head, tail = os.path.split(path)
    return os.path.join(head, TEMP_PREFIX + tail + TEMP_SUFFIX)


def command(fmt: str, upper: str, out: str) -> list[str]:
    """The tool's command line: what a person would run by hand (tools/bench compares)."""
    if fmt == "erofs":
        return ["mkfs.erofs", "--quiet", out, upper]
    # zstd level 3: the defaults (gzip 9) are 40 times slower (shared/recipes README).
    return ["mksquashfs", upper, out, "-noappend", "-quiet", "-no-progress",
            "-comp", "zstd", "-Xcompression-level", "3"]


def private_xattrs(path: str) -> list[str]:
    """The overlay's private bookkeeping xattrs of PATH (never followed)."""
    return [n for n in os.listxattr(path, follow_symlinks=False)
            if n.startswith(PRIVATE_PREFIX) and n not in KEPT
            and not n.startswith(ESCAPED_PREFIX)]


def _tie() -> None:
    set_death_signal(9)  # the tool dies with the daemon: no half layer is written on


class LinuxLayerFiles:
    def prepare_dir(self, directory: str) -> None:
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as e:
            raise CommitFailed(f"Cannot make the layer directory '{directory}': "
                               f"{e.strerror}.") from None

    def next_path(self, directory: str, fmt: str) -> str:
        """DIRECTORY/NNNN.EXT, one above the highest number there (files are never reused:
        a layer file discarded with its overlay may be stacked again later)."""
        try:
            names = os.listdir(directory)
        except OSError as e:
            raise CommitFailed(f"Cannot read the layer directory '{directory}': "
                               f"{e.strerror}.") from None
        numbers = [int(n.split(".")[0]) for n in names if n.split(".")[0].isdigit()]
        return os.path.join(directory, f"{max(numbers, default=0) + 1:04d}{EXTENSIONS[fmt]}")

    def build(self, upper: str, path: str, fmt: str,
              cancelled: Callable[[], bool] | None = None) -> Applied:
        start = time.monotonic()
        entries, size = self._clean(upper, fmt)
        try:
            self._write(upper, path, fmt, cancelled)
        except OSError as e:
            self.remove(path)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"No space left for the layer file '{path}'.") from None
            raise CommitFailed(f"Cannot write the layer file '{path}': {e.strerror}.") from None
        except BaseException:
            self.remove(path)
            raise
        return Applied(entries, size, time.monotonic() - start)

    def squash(self, sources: list[str], path: str, fmt: str,
               cancelled: Callable[[], bool] | None = None) -> Applied:
        """The layers mounted at SOURCES (lowest first) as one layer file PATH, made as
        ``build`` makes one (whole or not at all); composed on disk beside it first."""
        start = time.monotonic()
        stage = stage_of(path)
        try:
            if os.path.lexists(stage):
                shutil.rmtree(stage)
            entries, size = compose(sources, stage)
            self._clean(stage, fmt)
            self._write(stage, path, fmt, cancelled)
        except OSError as e:
            self.remove(path)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"No space left to squash into '{path}'.") from None
            raise CommitFailed(f"Cannot squash the layers into '{path}': {e.strerror}"
                               f" ('{e.filename}').") from None
        except BaseException:
            self.remove(path)
            raise
        shutil.rmtree(stage, ignore_errors=True)
        return Applied(entries, size, time.monotonic() - start)

    def _write(self, tree: str, path: str, fmt: str,
               cancelled: Callable[[], bool] | None) -> None:
        """The tool makes TREE into PATH's temporary, fsynced, renamed, directory fsynced."""
        tmp = temporary(path)
        self._run(command(fmt, tree, tmp), cancelled)
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove(self, path: str) -> None:
        shutil.rmtree(stage_of(path), ignore_errors=True)
        for p in (temporary(path), path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise CommitFailed(f"Cannot remove '{p}': {e.strerror}.") from None

    def _clean(self, upper: str, fmt: str) -> tuple[int, int]:
        """Drop the private xattrs from the upper (never following a link); refuse what
        FMT cannot hold. The number of entries, and the bytes the file system holding
        UPPER uses (the tmpfs: what the writes take in RAM).

        This walk is all a layer commit adds to the tool's own time, so it looks only
        where the bookkeeping can be: every directory (``origin`` of a copied-up one,
        ``impure``, the root's ``uuid``), and the other entries of an *impure* directory,
        which overlayfs marks so whenever it holds an entry with ``origin`` (copied up or
        moved in). An entry of a directory that is not impure was made in the upper and
        carries none. No stat either: the kind comes with the directory entry. squashfs
        looks at every entry (an ACL anywhere must be refused)."""
        entries = 0
        every = fmt == "squashfs"
        try:
            stack = [(upper, IMPURE in self._clean_one(upper, fmt))]
            while stack:
                d, impure = stack.pop()
                markers = []
                with os.scandir(d) as it:
                    for e in it:
                        if is_marker(e.name):
                            markers.append(e.path)
                            continue
                        entries += 1
                        if e.is_dir(follow_symlinks=False):
                            stack.append((e.path, IMPURE in self._clean_one(e.path, fmt)))
                        elif impure or every:
                            self._clean_one(e.path, fmt)
                if markers:
                    _drop_markers(d, markers)
            vfs = os.statvfs(upper)
        except OSError as e:
            raise CommitFailed(f"Cannot read the writes in RAM: {e.strerror} "
                               f"('{e.filename}').") from None
        return entries, (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize

    def _clean_one(self, path: str, fmt: str) -> list[str]:
        """PATH's xattrs as they were; the private ones are removed."""
        names = os.listxattr(path, follow_symlinks=False)
        if not names:
            return names
        if fmt == "squashfs":
            bad = [n for n in names if not n.startswith(SQUASHFS_PREFIXES)]
            if bad:
                raise CommitFailed(
                    f"A squashfs layer cannot hold the xattr '{bad[0]}' (ACLs and other "
                    "system.* xattrs) of an entry the overlay changed; commit to an erofs "
                    "layer instead (layer_format 'erofs').")
        for n in names:
            if (n.startswith(PRIVATE_PREFIX) and n not in KEPT \
                    and not n.startswith(ESCAPED_PREFIX)) or n.startswith(FUSE_PREFIX):
                os.removexattr(path, n, follow_symlinks=False)
        return names

    def _run(self, argv: list[str], cancelled: Callable[[], bool] | None) -> None:
        # Its messages go to a file: a pipe nobody reads while it runs could fill and stop it.
        with tempfile.TemporaryFile() as errors:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=errors,
                                        preexec_fn=_tie, cwd="/")
            except OSError as e:
                package = "erofs-utils" if argv[0] == "mkfs.erofs" else "squashfs-tools"
                raise CommitFailed(f"Cannot run {argv[0]} ({e.strerror}); install "
                                   f"{package}.") from None
            try:
                # A pidfd is readable the moment the tool exits: no polling delay at the
                # end (Popen.wait with a timeout sleeps up to 50 ms between looks).
                pidfd = os.pidfd_open(proc.pid)
                try:
                    while not select.select([pidfd], [], [], POLL)[0]:
                        if cancelled is not None and cancelled():
                            raise Cancelled("The commit was cancelled while the layer was "
                                            "written; the part written was removed.")
                finally:
                    os.close(pidfd)
                proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()  # our own child, by its PID
                    proc.wait()
            errors.seek(0)
            err = errors.read(65536).decode(errors="replace").strip()
        if proc.returncode != 0:
            last = err.splitlines()[-1] if err else f"exit status {proc.returncode}"
            if "No space" in err:
                raise NoSpace(f"No space left for the layer: {last[:300]}")
            raise CommitFailed(f"{argv[0]} failed: {last[:300]}")


def _drop_markers(directory: str, markers: list[str]) -> None:
    """fuse-overlayfs' opaque markers (``.wh..wh..opq``, ``.wh..opq``) go: the directory's
    trusted.overlay.opaque says it already, and the kernel would show them as files. The
    directory keeps its times (its mtime is the view's)."""
    st = os.lstat(directory)
    for path in markers:
        os.unlink(path)
    os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


# -- squashing layers ----------------------------------------------------------------------

OPAQUE = "trusted.overlay.opaque"


def stage_of(path: str) -> str:
    """Where the layers are composed before the tool makes PATH of them."""
    return temporary(path) + ".d"


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_whiteout_entry(path: str, st: os.stat_result) -> bool:
    """Both forms: a character device 0/0, or a file marked trusted.overlay.whiteout."""
    if _is_whiteout(st):
        return True
    if not stat.S_ISREG(st.st_mode) or st.st_size:
        return False
    try:
        os.getxattr(path, "trusted.overlay.whiteout", follow_symlinks=False)
        return True
    except OSError:
        return False


def _opaque(path: str) -> bytes | None:
    try:
        return os.getxattr(path, OPAQUE, follow_symlinks=False)
    except OSError:
        return None


def _remove_any(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _copy_meta(src: str, dst: str, st: os.stat_result, *, replace_xattrs: bool) -> None:
    """Owner, then mode (chown clears setuid), xattrs (a capability after chown), times."""
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    names = os.listxattr(src, follow_symlinks=False)
    if replace_xattrs:
        for n in os.listxattr(dst, follow_symlinks=False):
            if n not in names:
                os.removexattr(dst, n, follow_symlinks=False)
    for n in names:
        os.setxattr(dst, n, os.getxattr(src, n, follow_symlinks=False), follow_symlinks=False)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


class _Composer:
    """Compose layers, lowest first, into one directory in the overlayfs format: what a
    layer above says wins (a whiteout stays a whiteout: the image below still has the
    name), a directory that is not opaque merges with the one below, and one over a
    non-directory (or a whiteout) of a layer below becomes opaque, as the kernel sees it."""

    def __init__(self) -> None:
        self.links: dict[tuple[int, int, int], str] = {}
        self.layer = 0
        self.entries = 0
        self.bytes = 0

    def merge_dir(self, src: str, dst: str, opaque: bool = False) -> None:
        """SRC over DST; OPAQUE: DST hides everything below it, so a whiteout in it has
        nothing to hide (and the kernel, reading such a directory as it is, would list
        it): the entry goes, no whiteout is written."""
        with os.scandir(src) as it:
            names = sorted(e.name for e in it)
        for name in names:
            s, d = os.path.join(src, name), os.path.join(dst, name)
            st = os.lstat(s)
            try:
                dst_st: os.stat_result | None = os.lstat(d)
            except FileNotFoundError:
                dst_st = None
            self.entries += 1
            if stat.S_ISDIR(st.st_mode):
                self._dir(s, d, st, dst_st)
            else:
                if dst_st is not None:
                    _remove_any(d)
                if not (opaque and _is_whiteout_entry(s, st)):
                    self._other(s, d, st)

    def _dir(self, s: str, d: str, st: os.stat_result, dst_st: os.stat_result | None) -> None:
        s_opq = _opaque(s)
        if dst_st is not None and stat.S_ISDIR(dst_st.st_mode) and s_opq != b"y":
            d_opq = _opaque(d)
            self.merge_dir(s, d, d_opq == b"y")
            _copy_meta(s, d, st, replace_xattrs=True)
            if d_opq == b"y" or (d_opq == b"x" and s_opq is None):
                os.setxattr(d, OPAQUE, d_opq, follow_symlinks=False)
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            return
        if dst_st is not None:
            _remove_any(d)
        os.mkdir(d, 0o700)
        over_other = dst_st is not None and not stat.S_ISDIR(dst_st.st_mode)
        self.merge_dir(s, d, s_opq == b"y" or over_other)
        _copy_meta(s, d, st, replace_xattrs=False)
        if over_other and s_opq is None:
            os.setxattr(d, OPAQUE, b"y", follow_symlinks=False)  # the kernel stops here too
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def _other(self, s: str, d: str, st: os.stat_result) -> None:
        key = (self.layer, st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links and os.path.lexists(self.links[key]):
            os.link(self.links[key], d, follow_symlinks=False)
            return
        if stat.S_ISREG(st.st_mode):
            with open(s, "rb") as fi, open(d, "xb") as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
            self.bytes += st.st_size
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        else:  # devices, whiteouts (0/0), fifos, sockets
            os.mknod(d, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
        _copy_meta(s, d, st, replace_xattrs=False)
        if st.st_nlink > 1:
            self.links[key] = d


def compose(sources: list[str], stage: str) -> tuple[int, int]:
    """SOURCES (the layers' mounts, lowest first) composed into STAGE (made here): the
    entries and bytes written."""
    c = _Composer()
    os.mkdir(stage, 0o700)
    for i, src in enumerate(sources):
        c.layer = i
        c.merge_dir(src, stage)
        _copy_meta(src, stage, os.lstat(src), replace_xattrs=True)
    return c.entries, c.bytes
