"""Undoing everything the run made, and checking nothing of it is left.

Only what the bench made is touched: its daemons (by PID), the overlays under its own
runtime directories, the baseline's own mount points and images.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path
from types import FrameType

from overlayd.config import DaemonConfig
from overlayd.errors import OverlaydError
from overlayd.host.linux import LinuxHost
from overlayd.host.mounttable import read_mounts
from overlayd.layout import is_within
from overlayd.manager import OverlayManager
from tools.bench.baseline import attached_loops
from tools.bench.daemon import processes_mentioning
from tools.bench.measures import Bench
from tools.bench.settings import sh

CLEANUP_ATTEMPTS = 3
CLEANUP_PAUSE_SECONDS = 5.0


async def discard_leftovers(config: DaemonConfig) -> list[str]:
    """Discard every overlay still under CONFIG's runtime directory: a fresh manager's
    recovery adopts the live ones (and removes half-made ones), then each is discarded with
    force. Never while a daemon of ours runs over that directory."""
    if not config.runtime_dir.exists():
        return []
    mgr = OverlayManager(config, LinuxHost())
    problems = list((await mgr.start()).problems)
    for rec in mgr.list():
        try:
            await mgr.discard(rec.name, force=True)
        except OverlaydError as e:
            problems.append(f"discard '{rec.name}': {e}")
    await mgr.aclose()
    return problems


def wait_released(runtime_dir: Path, image: Path, seconds: float = 10.0) -> list[str]:
    """Mounts still under RUNTIME_DIR and loop devices still backed by IMAGE after SECONDS
    (autoclear detaches a loop device a moment after its last unmount)."""
    deadline = time.monotonic() + seconds
    while True:
        found = [f"mount {m.target}" for m in read_mounts() if is_within(m.target, runtime_dir)]
        found += [f"loop device {d}" for d, b in attached_loops().items() if b == str(image)]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def leftovers(root: Path, bus_dirs: list[Path]) -> list[str]:
    """Mounts under ROOT, loop devices backed by files under it, processes naming ROOT or
    one of BUS_DIRS (a daemon of ours, its dbus-daemon), and BUS_DIRS still there."""
    found = [f"mount {m.target} ({m.fstype} from {m.source})" for m in read_mounts()
             if is_within(m.target, root)]
    found += [f"loop device {line}" for line in sh("losetup", "-a").splitlines()
              if str(root) in line]
    found += processes_mentioning([str(root), *(str(d) for d in bus_dirs)])
    found += [f"directory {d}" for d in bus_dirs if d.exists()]
    return found


def wait_for_leftovers(root: Path, bus_dirs: list[Path], seconds: float = 10.0) -> list[str]:
    """Leftovers that are still there after SECONDS (autoclear and udev take a moment)."""
    deadline = time.monotonic() + seconds
    while True:
        found = leftovers(root, bus_dirs)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def cleanup(bench: Bench) -> list[str]:
    """Undo everything; the warnings to print (empty when all is gone)."""
    bench.stop_daemons()  # first: a running daemon owns the overlays of its runtime directory
    warnings = list(bench.problems)
    root = bench.paths.root
    bus_dirs = [d.bus_dir for d in bench.daemons if d.bus_dir is not None]
    for attempt in range(CLEANUP_ATTEMPTS):
        # A copy of our mounts in another mount namespace (anyone's unshare -m while a
        # commit had an image mounted read-write) can make a first attempt fail.
        problems = undo(bench)
        left = wait_for_leftovers(root, bus_dirs)
        if not problems or attempt == CLEANUP_ATTEMPTS - 1 \
                or not any(item.startswith("mount ") for item in left):
            warnings += problems
            break
        time.sleep(CLEANUP_PAUSE_SECONDS)
    if any(item.startswith("mount ") for item in left):
        warnings.append(f"kept '{root}' because something is still mounted in it")
    else:
        shutil.rmtree(root, ignore_errors=True)
        left = wait_for_leftovers(root, bus_dirs)
        if root.exists():
            warnings.append(f"could not remove '{root}' entirely")
    warnings += [f"left behind: {item}" for item in left]
    return warnings


def undo(bench: Bench) -> list[str]:
    """Discard the overlays left in the engine's and the daemons' runtime directories, and
    undo the baseline's mounts and loop devices; the problems met."""
    problems: list[str] = []
    for config, whose in ((bench.config, "engine's"), (bench.bus_config, "daemons'")):
        if config is bench.bus_config and any(d.running for d in bench.daemons):
            problems.append("a daemon is still running; left its overlays alone")
            continue
        try:
            problems += asyncio.run(discard_leftovers(config))
        except Exception as e:  # keep going: the baseline's mounts must still be undone
            problems.append(f"cleaning up the {whose} overlays failed: {e}")
    return problems + bench.tracker.undo()


def ignore_signals() -> None:
    """From now on only cleanup runs; a second Ctrl-C must not cut it short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
