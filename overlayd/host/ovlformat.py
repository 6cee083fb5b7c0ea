"""The overlayfs on-disk format of an upper layer (Documentation/filesystems/overlayfs.rst).

Whiteouts come in two forms: a character device 0/0, or an empty regular file with the
``trusted.overlay.whiteout`` xattr. A directory is opaque when ``trusted.overlay.opaque``
is "y"; "x" only says the directory holds xattr whiteouts and is *not* opaque.
``trusted.overlay.*`` names are the kernel's private bookkeeping and never reach the
image, except escaped names (``trusted.overlay.overlay.*``), which are real user data
for nested overlays and are copied verbatim.

fuse-overlayfs (engine = "fuse") writes the same format as root, and more: every
directory it makes opaque (and every new one) also gets a regular file ``.wh..wh..opq``
(aufs' opaque marker) and a character device 0/0 ``.wh..opq``; and it keeps its own
bookkeeping in ``user.fuseoverlayfs.*`` xattrs (``origin`` on copied-up entries;
``opaque`` where it cannot write trusted.*). Those names are bookkeeping too: the two
markers are not entries of the directory, and those xattrs never reach the image.
"""

from __future__ import annotations

import errno
import os
import stat

OVL_PREFIX = "trusted.overlay."
OVL_ESCAPED = "trusted.overlay.overlay."
OPAQUE = OVL_PREFIX + "opaque"
WHITEOUT_XATTR = OVL_PREFIX + "whiteout"
FUSE_PREFIX = "user.fuseoverlayfs."
FUSE_OPAQUE = FUSE_PREFIX + "opaque"
OPAQUE_MARKER = ".wh..wh..opq"  # fuse-overlayfs: a regular file in an opaque directory
FUSE_MARKERS = frozenset({OPAQUE_MARKER, ".wh..opq"})


def user_xattr(name: str) -> bool:
    """True for an xattr that belongs to the file, False for overlayfs bookkeeping (the
    kernel's or fuse-overlayfs')."""
    if name.startswith(FUSE_PREFIX):
        return False
    return not name.startswith(OVL_PREFIX) or name.startswith(OVL_ESCAPED)


def is_marker(name: str) -> bool:
    """A name fuse-overlayfs writes into an opaque directory: bookkeeping, not an entry."""
    return name in FUSE_MARKERS


def list_xattrs(path: str | int, follow: bool = False) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=follow) if isinstance(path, str) \
            else os.listxattr(path)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.ENODATA):
            return []
        raise


def get_xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def user_xattrs(path: str) -> dict[str, bytes]:
    out = {}
    for name in list_xattrs(path):
        if user_xattr(name):
            value = get_xattr(path, name)
            if value is not None:
                out[name] = value
    return out


def is_whiteout(path: str, st: os.stat_result) -> bool:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return get_xattr(path, WHITEOUT_XATTR) is not None
    return False


def is_opaque(path: str) -> bool:
    if get_xattr(path, OPAQUE) == b"y" or get_xattr(path, FUSE_OPAQUE) == b"y":
        return True
    return os.path.lexists(os.path.join(path, OPAQUE_MARKER))
