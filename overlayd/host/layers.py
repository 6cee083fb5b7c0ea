"""The overlayfs upper as data: preparing one, merging it into a lower, listing it."""

from __future__ import annotations

import errno
import logging
import os
import stat

from overlayd.errors import CommitFailed, NoSpace, OverlaydError
from overlayd.host.errors import Op, map_os_errors
from overlayd.host.merge import ApplyError, apply_upper
from overlayd.host.ovlformat import user_xattrs
from overlayd.host.ports import Applied, Progress
from overlayd.host.upperdiff import diff_upper

log = logging.getLogger(__name__)


class LinuxLayers:
    def prepare_upper(self, lower_root: str, upper: str, work: str) -> None:
        """Make upper/ and work/; the upper root takes the lower root's owner, mode, xattrs
        and times, because the merged root shows the upper root's attributes."""
        with map_os_errors(f"prepare '{upper}'", Op.FILE):
            os.mkdir(work, 0o700)
            os.mkdir(upper, 0o755)
            st = os.stat(lower_root)
            os.chown(upper, st.st_uid, st.st_gid)
            for name, value in user_xattrs(lower_root).items():
                try:
                    os.setxattr(upper, name, value)
                except OSError as e:  # e.g. a security label this kernel will not set here
                    log.info("Cannot copy the attribute %s of the image's root to the "
                             "upper: %s, ignoring.", name, e.strerror)
            os.chmod(upper, stat.S_IMODE(st.st_mode))
            os.utime(upper, ns=(st.st_atime_ns, st.st_mtime_ns))

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
            raise OverlaydError(f"Cannot read the changes: {e.strerror} ({e.filename}).") from None
        except RecursionError:
            raise OverlaydError("Cannot read the changes: the tree of changes is nested too "
                              "deeply to walk.") from None
