"""Run a command while zram devices that are not the command's come and go, as on a busy
host (another overlayd, zram-generator, another test run); then remove what it added.

    python -m tests.zram_churn [--held N] [--pause S] -- COMMAND [ARG]...
    e.g. python -m tests.zram_churn -- .venv/bin/python -m pytest -q tests/kernel/test_zram.py

In a loop until COMMAND ends: hot-add a device (reading /sys/class/zram-control/hot_add),
keep up to N (--held, 2) at a time, and hot-remove the oldest of its own by number, with
S seconds (--pause, 0.02) between steps. The kernel hands out the lowest free number, so
the devices take the numbers a test's daemon has just given back, and the machine's set of
devices changes under every test. It only ever removes a number its own hot_add returned
(never zram0, never anyone else's); a device still busy (udev's probe) is tried again.
Afterwards (also on failure or Ctrl-C) it removes every device of its own that is left.
Exit status: COMMAND's. Prints on stderr how many devices it added.
"""

from __future__ import annotations

import argparse
import errno
import subprocess
import sys
import time
from collections import deque

CONTROL = "/sys/class/zram-control"


def hot_add() -> int:
    with open(f"{CONTROL}/hot_add") as f:
        return int(f.read().strip())


def hot_remove(zid: int, patience: float = 10.0) -> None:
    """Remove our own /dev/zramZID, waiting while it is busy (udev probes a new device)."""
    end = time.monotonic() + patience
    while True:
        try:
            with open(f"{CONTROL}/hot_remove", "w") as f:
                f.write(str(zid))
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > end:
                raise
            time.sleep(0.01)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.zram_churn")
    ap.add_argument("--held", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.02)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no COMMAND")
    mine: deque[int] = deque()
    added = 0
    proc = subprocess.Popen(cmd)
    try:
        while proc.poll() is None:
            mine.append(hot_add())
            added += 1
            time.sleep(args.pause)
            while len(mine) > args.held:
                hot_remove(mine[0])
                mine.popleft()
            time.sleep(args.pause)
            if added % 3 == 0 and mine:  # sometimes give back the newest: a gap below
                hot_remove(mine[-1])
                mine.pop()
    except BaseException:
        proc.terminate()  # the command we started, by its PID
        proc.wait()
        raise
    finally:
        while mine:
            zid = mine.pop()
            try:
                hot_remove(zid)
            except OSError as e:
                print(f"zram_churn: cannot remove its /dev/zram{zid}: {e}", file=sys.stderr)
        print(f"zram_churn: added and removed {added} devices of its own", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
