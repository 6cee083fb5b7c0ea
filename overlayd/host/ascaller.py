"""Open a file with a caller's credentials, so root never reads for someone who can't.

A forked child drops to the caller's uid, gid and groups, opens the path, and hands the
fd back over a socketpair (SCM_RIGHTS). The kernel checks permissions on the caller's
behalf, on the very file the fd refers to: nothing to race between a check and the open.
"""

from __future__ import annotations

import errno
import os
import pwd
import signal
import socket

NOBODY = 65534


def credentials(uid: int) -> tuple[int, list[int]]:
    """(primary gid, supplementary groups) of UID, from the user database."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return NOBODY, []
    return pw.pw_gid, os.getgrouplist(pw.pw_name, pw.pw_gid)


def open_as(path: str, uid: int, flags: int = os.O_RDONLY, timeout: float = 10.0) -> int:
    """An fd of PATH opened as UID, or OSError with the errno the caller would have got.

    The socketpair is SOCK_SEQPACKET, so a child that dies says so (EOF) instead of
    leaving us waiting; a child that hangs (an open that blocks) is killed after TIMEOUT.
    """
    gid, groups = credentials(uid)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # child: only syscalls, then _exit, never back into the parent's code
        code = 0
        try:
            parent.close()
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOCTTY)
            socket.send_fds(child, [b"0"], [fd])
        except OSError as e:
            child.send(str(e.errno or errno.EACCES).encode())
        except BaseException:
            code = 1
        os._exit(code)
    child.close()
    try:
        parent.settimeout(timeout)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(parent, 16, 1)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)  # our own child, by PID
            raise OSError(errno.ETIMEDOUT, "opening it did not finish", path) from None
    finally:
        parent.close()
        os.waitpid(pid, 0)
    if fds:
        return fds[0]
    err = int(msg or b"0") or errno.EACCES
    raise OSError(err, os.strerror(err), path)
