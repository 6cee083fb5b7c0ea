"""Child processes that cannot outlive overlayd (PR_SET_PDEATHSIG), for --standalone."""

from __future__ import annotations

import asyncio
import ctypes
import signal

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


async def spawn_tied(*argv: str, env: dict[str, str] | None = None
                     ) -> asyncio.subprocess.Process:
    """Start ARGV with stdout and stderr piped; the kernel sends it SIGTERM if overlayd
    dies."""
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent, env=env)
