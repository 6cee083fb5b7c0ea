"""Start a command as a child subreaper's child, optionally in a busy private mount namespace.

    python launch.py [--mounts FILE] -- COMMAND...

* It is a child subreaper (PR_SET_CHILD_SUBREAPER): whatever COMMAND leaves running when it
  dies is re-parented here instead of to PID 1, and reaped here. It exits once every
  descendant is gone, with COMMAND's status: so "launch.py exited" means "nothing COMMAND
  started is still running", which is what the tests check after a kill -9.
* With --mounts it first enters a private mount namespace and mounts there one tmpfs per
  line of FILE ("SOURCE TARGET", targets existing directories). Nothing of it is visible to
  the host, and all of it disappears with the namespace's last process, even if the test
  runner is killed.

Only the standard library: it runs with any python3, before anything else is imported.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_char_p]


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)


def busy_namespace(spec: str) -> None:
    check(libc.unshare(CLONE_NEWNS), "unshare")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    with open(spec) as f:
        for line in f:
            source, target = line.split()
            check(libc.mount(source.encode(), target.encode(), b"tmpfs", 0, b"size=64k"),
                  f"mount {target}")


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--mounts"]:
        busy_namespace(args[1])
        args = args[2:]
    assert args[0] == "--", args
    check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl")
    child = subprocess.Popen(args[1:])
    status = 0
    while True:
        try:
            pid, wstatus = os.wait()
        except ChildProcessError:  # no descendant left
            return status
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(wstatus)
            child.returncode = status  # reaped here, not by Popen


if __name__ == "__main__":
    sys.exit(main())
