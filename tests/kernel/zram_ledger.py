"""The zram devices a test's own daemon added and removed, so that its leak check is about
them alone: on a busy host other processes (another overlayd, zram-generator, another test
run) hot-add and remove zram devices at any moment, and the machine-wide set of devices
before and after a test says nothing about the test.

Every hot_add and successful hot_remove that ZramUpper makes (also through ``collect``) in
a process where the ledger is installed is appended to one file, under an flock held
around the kernel call and the line: the lines are in the kernel's order, across the
tests' process and its children (tests/kernel/crashing.py, killed -9, installs it from
the environment: LEDGER_ENV). A kill cannot fall between a hot_add and its line in a
way that matters: crashing.py kills only after a port call has returned.

``leaks`` then names each device added and not removed again (blank or not: the number
is the kernel's answer to our own hot_add, and nobody else may remove it), and each device
removed that was not added here (someone else's)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from overlayd.host import uppers
from overlayd.host.uppers import ZramUpper

LEDGER_ENV = "OVERLAYD_TEST_ZRAM_LEDGER"


class ZramLedger:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _locked(self) -> Iterator[Any]:
        with open(self.path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield f
            finally:
                f.flush()
                fcntl.flock(f, fcntl.LOCK_UN)

    def install(self, setattr_: Callable[[Any, str, Any], None] = setattr) -> None:
        """Log this process's hot_add and hot_remove calls (SETATTR: monkeypatch.setattr,
        to undo it after the test)."""
        self.path.touch()
        hot_add, try_remove = ZramUpper._hot_add, uppers._try_remove

        def logged_add(upper: ZramUpper) -> int:
            with self._locked() as f:
                zid = hot_add(upper)
                f.write(f"add {zid} {os.getpid()}\n")
            return zid

        def logged_remove(zid: int) -> bool:
            with self._locked() as f:
                done = try_remove(zid)
                if done:
                    f.write(f"remove {zid} {os.getpid()}\n")
            return done

        setattr_(ZramUpper, "_hot_add", logged_add)
        setattr_(uppers, "_try_remove", logged_remove)  # _hot_remove and collect call it

    def events(self) -> list[tuple[str, int]]:
        text = self.path.read_text() if self.path.exists() else ""
        return [(w[0], int(w[1])) for w in (line.split() for line in text.splitlines())]

    def added(self) -> list[int]:
        return [zid for what, zid in self.events() if what == "add"]

    def leaks(self) -> list[str]:
        """What is wrong so far: devices of ours still there, devices not ours removed."""
        ours: set[int] = set()
        wrong = []
        for what, zid in self.events():
            if what == "add":
                ours.add(zid)
            elif zid in ours:
                ours.remove(zid)
            else:
                wrong.append(f"removed /dev/zram{zid}, which it did not add")
        for zid in sorted(ours):
            there = os.path.exists(f"{uppers.SYS_BLOCK}/zram{zid}")
            wrong.append(f"added /dev/zram{zid} and did not remove it" +
                         ("" if there else " (someone else did)"))
        return wrong

    def assert_clean(self) -> None:
        wrong = self.leaks()
        assert not wrong, "the test's zram devices: " + "; ".join(wrong)


def install_from_environment() -> None:
    """In a child daemon process: log to the test's ledger, if the test named one."""
    path = os.environ.get(LEDGER_ENV)
    if path:
        ZramLedger(Path(path)).install()


def carries(device: str, fs_uuid: str) -> bool:
    """Whether DEVICE exists and carries the ext4 with FS_UUID: a device number alone says
    nothing once the device was removed (another process's hot_add may get the number)."""
    return fs_uuid != "" and uppers._ext4_uuid(device) == fs_uuid
