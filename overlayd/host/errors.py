"""OSError -> overlayd error, by the kind of operation: the one mapper of the host layer.

A failed mount is ``MountFailed``; a failed mkdir, write or statvfs is not, it is the
generic ``Failed`` (``OverlaydError``) with the operation in its message. A busy target is
``OverlayBusy`` only for unmounts (an rmdir that says EBUSY is a directory still mounted
on, which is overlayd's problem, not the caller's); a full disk is ``NoSpace`` anywhere.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
from collections.abc import Iterator

from overlayd.errors import MountFailed, NoSpace, OverlayBusy, OverlaydError


class Op(enum.Enum):
    MOUNT = "mount"  # mounting, attaching a loop device, detaching
    FILE = "file"  # files and directories of the daemon's own


@contextlib.contextmanager
def map_os_errors(what: str, op: Op) -> Iterator[None]:
    """Turn an OSError raised inside into an overlayd error saying 'Cannot WHAT: ...'."""
    try:
        yield
    except OSError as e:
        raise os_error(e, what, op) from None


def os_error(e: OSError, what: str, op: Op) -> OverlaydError:
    detail = e.strerror or os.strerror(e.errno or 0)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"Cannot {what}: no space left ({detail}).")
    if op is Op.FILE:
        return OverlaydError(f"Cannot {what}: {detail}.")
    if e.errno == errno.EBUSY:
        return OverlayBusy(f"Cannot {what}: it is busy ({detail}).")
    if e.errno == errno.ENODEV:
        return MountFailed(f"Cannot {what}: the kernel does not support this file system.",
                           e.errno)
    return MountFailed(f"Cannot {what}: {detail}.", e.errno)
