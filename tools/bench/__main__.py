"""``python -m tools.bench``: run every measurement, clean up, print the table (or JSON)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from overlayd.errors import OverlaydError
from overlayd.host.linux import LinuxHost
from overlayd.manager import OverlayManager
from tools.bench import __doc__ as package_doc
from tools.bench import engines, jobs, layers, overlays, startup, uppers
from tools.bench.cleanup import cleanup, ignore_signals, interrupt
from tools.bench.daemon import OVERLAYD
from tools.bench.measures import Bench
from tools.bench.report import Row, as_json, table
from tools.bench.settings import TOOLS, BenchError, Paths, parse_args, say


async def run(bench: Bench) -> list[Row]:
    mgr = OverlayManager(bench.config, LinuxHost())
    await mgr.start()
    rows = await bench.cycles(mgr)
    rows += await overlays.scale(bench)
    if bench.settings.restart:
        rows.append(await overlays.restart(bench))
    if bench.settings.burst:
        rows.append(await overlays.burst(bench))
    rows.append(await bench.big(mgr))
    rows.append(await bench.small(mgr))
    rows += await jobs.rows(bench, mgr)
    rows += await layers.rows(bench, mgr)
    rows += startup.rows(bench.paths.root)
    rows += await uppers.rows(bench, mgr)
    rows += await engines.rows(bench, mgr)
    return rows


def measure(bench: Bench) -> list[Row]:
    """Run the measurements on one event loop. If interrupted, cancel them and wait for a
    create or commit still running in a worker thread, so cleanup sees its result."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(run(bench))
    try:
        return loop.run_until_complete(task)
    finally:
        ignore_signals()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (loop devices, mounts).")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing commands: {', '.join(missing)}.")
    if not os.path.exists("/dev/loop-control"):
        raise BenchError("needs /dev/loop-control.")
    if not os.access(OVERLAYD, os.X_OK):
        raise BenchError(f"needs the daemon at '{OVERLAYD}' (make setup).")


def main(argv: list[str] | None = None) -> int:
    settings, json_out = parse_args(argv, (package_doc or "").split("\n\n")[0])
    try:
        preflight()
    except BenchError as e:
        say(str(e))
        return 2
    root = Path(tempfile.mkdtemp(prefix="overlayd-bench-", dir="/var/tmp")).resolve()
    paths = Paths(root)
    bench = Bench(settings, paths)
    signal.signal(signal.SIGTERM, interrupt)
    rows: list[Row] = []
    error: str | None = None
    try:
        paths.make()
        rows = measure(bench)
    except (BenchError, OverlaydError, OSError) as e:
        error = str(e)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        ignore_signals()
        say("cleaning up")
        warnings = cleanup(bench)
    for w in warnings:
        say(f"WARNING: {w}")
    if error is not None:
        say(f"failed: {error}")
        return 1
    print(as_json(rows, settings, bench.raw, warnings) if json_out
          else table(rows, settings, bench.raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
