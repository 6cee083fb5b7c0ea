"""The helper that runs polkitd for ``--standalone``: its namespace, then its guard.

    overlayd --standalone             (root)
      |- dbus-daemon                  (root all its life: PR_SET_PDEATHSIG holds)
      `- this helper, "overlayd-guard" (root all its life: PR_SET_PDEATHSIG holds)
           `- polkitd                 (drops to user polkitd)

Why a helper: the kernel clears PR_SET_PDEATHSIG when a process changes its credentials,
so a polkitd started directly by overlayd outlives a ``kill -9`` of overlayd. The helper
never changes its credentials, so its own death signal survives; when it arrives (or any
SIGTERM, SIGINT, SIGHUP) it sends SIGTERM to polkitd, SIGKILL after KILL_AFTER seconds,
and exits once polkitd is gone. Only a SIGKILL of the helper itself would leave polkitd
behind.

Before that it prepares polkitd's mount namespace (overlayd.host.namespace): private, with
overlayd's mounts detached there, and the binds it was given. It is a fresh interpreter,
started with exec, not a fork of the daemon: the daemon has threads, and Python code in a
forked child of a threaded process may deadlock.

Usage (what overlayd.host.process.spawn_guarded builds)::

    python3 -I -c '...main()' [--runtime-dir DIR]... [--bind SRC DST]... -- COMMAND...
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from overlayd.host.namespace import (
    DEFAULT_RUNTIME_DIR,
    bind,
    detach_overlayd_mounts,
    enter_private_mount_namespace,
)

KILL_AFTER = 5  # seconds between SIGTERM and SIGKILL for the guarded command
NAME = b"overlayd-guard"  # what ps shows instead of python3
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

_libc = ctypes.CDLL(None, use_errno=True)


def set_death_signal(signo: int = signal.SIGTERM) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signo, 0, 0, 0)


def run_guarded(argv: list[str]) -> int:
    """Run ARGV as a child and wait for it; a stop signal to us is passed on as SIGTERM,
    then SIGKILL. Returns its exit status (128 + N for signal N, as a shell does)."""
    child = 0
    stopping = False

    def stop(_signo: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child:  # not reaped before waitpid() returns: the PID is still its
            os.kill(child, signal.SIGTERM)
            signal.alarm(KILL_AFTER)

    def kill(_signo: int, _frame: FrameType | None) -> None:
        if child:
            os.kill(child, signal.SIGKILL)

    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for signo in stops:
        signal.signal(signo, stop)
    signal.signal(signal.SIGALRM, kill)
    # Held back while forking, so that a stop signal reaches either the child itself
    # (default action, after exec) or us once we know the child's PID.
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    pid = os.fork()  # one thread here: fork is safe
    if pid == 0:
        try:
            for signo in (*stops, signal.SIGALRM):
                signal.signal(signo, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            # Helps until the child changes credentials; we are its guard after that.
            set_death_signal()
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    child = pid
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    if stopping:
        stop(signal.SIGTERM, None)
    _, status = os.waitpid(child, 0)  # retried after each signal handler (PEP 475)
    rc = os.waitstatus_to_exitcode(status)
    return 128 - rc if rc < 0 else rc


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="overlayd-guard")
    p.add_argument("--runtime-dir", type=Path, action="append", default=[])
    p.add_argument("--bind", nargs=2, action="append", default=[], metavar=("SRC", "DST"))
    p.add_argument("command", nargs="+")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    _libc.prctl(PR_SET_NAME, NAME, 0, 0, 0)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    runtime_dirs = [Path(os.path.realpath(d)) for d in args.runtime_dir or [DEFAULT_RUNTIME_DIR]]
    try:
        enter_private_mount_namespace()
        _count, problems = detach_overlayd_mounts(runtime_dirs)
        for problem in problems:  # a mount polkitd keeps busy; not a reason to fail
            print(f"overlayd-guard: {problem}", file=sys.stderr, flush=True)
        for source, target in args.bind:
            bind(source, target)
    except OSError as e:
        print(f"overlayd-guard: {e}", file=sys.stderr, flush=True)
        return 1
    return run_guarded(args.command)
