"""The container harness on a host whose loop devices come and go (a busy host).

The test adds a loop device of its own with LOOP_CTL_ADD (an index nobody has), removes it
while the container is being set up (after the harness has looked at /dev, before nspawn
starts), then adds it again after boot and uses it inside the container. Only that one
device is ever added or removed, and the kernel refuses to remove a bound one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

import pytest

from tests.system.container import Container
from tests.system.fixtures import require_system

LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81


def _loop_ctl(request: int, index: int) -> None:
    fd = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, index)
    finally:
        os.close(fd)


def _add_own_loop() -> int:
    """LOOP_CTL_ADD the first index above every existing loop device; returns it."""
    n = max((int(d[4:]) for d in os.listdir("/sys/block")
             if d.startswith("loop") and d[4:].isdigit()), default=-1) + 1
    for index in range(n, n + 64):
        try:
            _loop_ctl(LOOP_CTL_ADD, index)
        except OSError as e:
            if e.errno == errno.EEXIST:  # another process added it meanwhile
                continue
            raise
        return index
    raise AssertionError("cannot add a loop device")


def _wait_for(path: Path, present: bool) -> None:
    for _ in range(500):  # devtmpfs adds and removes the node a moment later
        if path.exists() == present:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} {'did not appear' if present else 'is still there'}")


@pytest.mark.system
def test_loop_devices_that_vanish_before_boot_or_appear_after_it(tmp_path: Path) -> None:
    require_system()
    index = _add_own_loop()
    node = Path(f"/dev/loop{index}")
    _wait_for(node, present=True)
    removed = False

    def vanish(_root: Path) -> None:  # runs after the harness set up, before nspawn
        nonlocal removed
        try:
            _loop_ctl(LOOP_CTL_REMOVE, index)
        except OSError as e:
            if e.errno == errno.EBUSY:  # another process attached it: not ours to remove
                pytest.skip(f"loop{index} was taken by another process")
            raise
        removed = True
        _wait_for(node, present=False)

    try:
        with Container.boot(tmp_path / "ct", machine="selftest-loops", prepare=vanish) as ct:
            assert ct.boot_state == "running", ct.failed_units()
            # A device the kernel adds after boot has its node in the container.
            _loop_ctl(LOOP_CTL_ADD, index)
            removed = False
            ct.run("truncate", "-s", "1M", "/tmp/late.img")
            ct.run("losetup", str(node), "/tmp/late.img")
            try:
                back = ct.run("losetup", "--noheadings", "--output", "BACK-FILE", str(node))
                assert back.stdout.strip() == "/tmp/late.img"
            finally:
                ct.run("losetup", "--detach", str(node))
    finally:
        if not removed:
            for _ in range(100):  # the detach in the container may still be settling
                try:
                    _loop_ctl(LOOP_CTL_REMOVE, index)
                    break
                except OSError as e:
                    if e.errno not in (errno.EBUSY, errno.ENODEV):
                        raise
                    if e.errno == errno.ENODEV:
                        break
                    time.sleep(0.05)
