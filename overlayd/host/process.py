"""Child processes that cannot outlive overlayd, for --standalone.

``spawn_tied`` is for a helper that stays root (dbus-daemon): PR_SET_PDEATHSIG is enough.
``spawn_guarded`` is for one that changes its uid (polkitd), which makes the kernel clear
that signal: it runs under overlayd.host.guard, which stays root and stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

from overlayd.host.guard import set_death_signal

# The guard runs from the same place as this package, whatever sys.path the daemon had
# (the installed commands put a private directory first; see tools/install.sh).
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
_GUARD_MAIN = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
               "from overlayd.host.guard import main; sys.exit(main())")


def _tie_to(parent: int) -> None:
    set_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above: nobody would stop us
        os._exit(1)


async def spawn_tied(*argv: str, env: dict[str, str] | None = None,
                     cwd: str | None = None) -> asyncio.subprocess.Process:
    """Start ARGV with stdout and stderr piped; the kernel sends it SIGTERM if overlayd
    dies."""
    parent = os.getpid()
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, preexec_fn=lambda: _tie_to(parent), env=env, cwd=cwd)


async def spawn_guarded(*argv: str, runtime_dir: Path, binds: Iterable[tuple[Path, Path]],
                        env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start ARGV under the guard, in a private mount namespace where overlayd's mounts
    (those of RUNTIME_DIR included) are detached and each (SRC, DST) of BINDS is bound.
    The process returned is the guard's: SIGTERM to it stops ARGV."""
    guard = [sys.executable, "-I", "-c", _GUARD_MAIN, _PACKAGE_PARENT,
             "--runtime-dir", str(runtime_dir)]
    for source, target in binds:
        guard += ["--bind", str(source), str(target)]
    return await spawn_tied(*guard, "--", *argv, env=env, cwd="/")
