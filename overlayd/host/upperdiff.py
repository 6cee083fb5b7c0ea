"""What an overlay changed, read from its upper layer against the lower.

Kinds: ``added`` (not in the lower), ``deleted`` (a whiteout), ``opaque`` (a directory
that replaces the lower one wholesale), ``modified`` (other content or type), and
``metadata`` (same content, other owner, mode, times or xattrs). A copied-up file that
nobody changed is not reported.
"""

from __future__ import annotations

import os
import stat

from overlayd.host.ovlformat import is_marker, is_opaque, is_whiteout, user_xattrs

_CHUNK = 1 << 20


def diff_upper(upper: str, lower: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    _walk(upper, lower, "", hidden=False, out=out)
    return out


def _walk(upper: str, lower: str, rel: str, hidden: bool, out: list[tuple[str, str]]) -> None:
    with os.scandir(os.path.join(upper, rel)) as it:
        names = sorted(e.name for e in it if not is_marker(e.name))
    for name in names:
        r = os.path.join(rel, name)
        src, dst = os.path.join(upper, r), os.path.join(lower, r)
        st = os.lstat(src)
        lst = None if hidden else _lstat(dst)
        path = "/" + r
        if is_whiteout(src, st):
            if lst is not None:
                out.append((path, "deleted"))
            continue
        if stat.S_ISDIR(st.st_mode):
            opaque = is_opaque(src)
            if lst is None:
                out.append((path, "added"))
            elif opaque:
                out.append((path, "opaque"))
            elif not stat.S_ISDIR(lst.st_mode):
                out.append((path, "modified"))
            elif _meta_differs(src, dst, st, lst):
                out.append((path, "metadata"))
            children_hidden = lst is None or opaque or not stat.S_ISDIR(lst.st_mode)
            _walk(upper, lower, r, children_hidden, out)
            continue
        if lst is None:
            out.append((path, "added"))
        elif stat.S_IFMT(st.st_mode) != stat.S_IFMT(lst.st_mode) or _content_differs(
            src, dst, st, lst
        ):
            out.append((path, "modified"))
        elif _meta_differs(src, dst, st, lst):
            out.append((path, "metadata"))


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _content_differs(src: str, dst: str, st: os.stat_result, lst: os.stat_result) -> bool:
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(src) != os.readlink(dst)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return st.st_rdev != lst.st_rdev
    if not stat.S_ISREG(st.st_mode):
        return False
    if st.st_size != lst.st_size:
        return True
    with open(src, "rb") as a, open(dst, "rb") as b:
        while True:
            x, y = a.read(_CHUNK), b.read(_CHUNK)
            if x != y:
                return True
            if not x:
                return False


def _meta_differs(src: str, dst: str, st: os.stat_result, lst: os.stat_result) -> bool:
    if (st.st_mode, st.st_uid, st.st_gid) != (lst.st_mode, lst.st_uid, lst.st_gid):
        return True
    if not stat.S_ISDIR(st.st_mode) and st.st_mtime_ns != lst.st_mtime_ns:
        return True
    return user_xattrs(src) != user_xattrs(dst)
