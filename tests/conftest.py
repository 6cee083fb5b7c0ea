"""Shared fixtures: temporary roots, the real-kernel gate, and the leak check.

Real-kernel tests (marker ``kernel``) need root, /dev/loop-control, tmpfs and overlayfs.
Elsewhere they skip with the reason, unless OVERLAYD_REQUIRE_KERNEL=1 (set by .ci/run),
which turns a skip into a failure: CI must never pass by skipping them.
At the end of the session the suite checks that it left no mount and no loop device.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import helpers


def pytest_configure(config: pytest.Config) -> None:
    """A temporary root of this checkout's own, /tmp/overlayd-tests-HASH/pytest-of-USER/...:
    pytest makes /tmp/pytest-of-USER 0700 at the start of every session, which takes away
    the search permission that tests running as other uids rely on (helpers.traversable)
    from any session of another checkout running at the same time. --basetemp or
    PYTEST_DEBUG_TEMPROOT, when given, win."""
    if config.option.basetemp is not None or "PYTEST_DEBUG_TEMPROOT" in os.environ:
        return
    checkout = hashlib.sha256(str(Path(__file__).resolve().parent).encode()).hexdigest()
    temproot = Path(tempfile.gettempdir()) / f"overlayd-tests-{checkout[:12]}"
    temproot.mkdir(mode=0o755, exist_ok=True)
    os.environ["PYTEST_DEBUG_TEMPROOT"] = str(temproot)


def kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/loop-control"):
        return "needs /dev/loop-control"
    with open("/proc/filesystems") as f:
        fs = f.read()
    for need in ("overlay", "tmpfs", "ext4"):
        if need not in fs:
            return f"the kernel lacks {need}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = kernel_unavailable()
    if reason is None:
        return
    wanted = [i for i in items if i.get_closest_marker("kernel")]
    if wanted and os.environ.get("OVERLAYD_REQUIRE_KERNEL") == "1":
        pytest.exit(f"{len(wanted)} real-kernel tests cannot run here ({reason}), and "
                    "OVERLAYD_REQUIRE_KERNEL=1 forbids skipping them.", returncode=3)
    for item in wanted:
        item.add_marker(pytest.mark.skip(reason=f"real-kernel test: {reason}"))


@pytest.fixture(scope="session", autouse=True)
def leak_check(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite as a whole leaves no mount and no loop device behind. Every test keeps its
    images and runtime directories under the session's base directory, so that is where
    leaks would show; other processes' mounts and loops on the machine are not ours."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    leaks: list[str] = []
    for _ in range(100):  # autoclear and lazy unmounts finish a moment later
        leaks = [f"mount {m}" for m in helpers.mounts_under(base)]
        leaks += [f"loop {d} -> {b}" for d, b in helpers.attached_loops().items()
                  if b.startswith(base + "/")]
        if not leaks:
            return
        time.sleep(0.05)
    pytest.fail("the test suite leaked:\n  " + "\n  ".join(leaks))


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A temporary root for one test; afterwards nothing may be mounted under it."""
    yield tmp_path
    left = helpers.mounts_under(str(tmp_path))
    if left:
        helpers.force_cleanup(str(tmp_path))
        pytest.fail(f"test left mounts under its root: {left}")


@pytest.fixture
def run() -> Iterator[Callable[[Any], Any]]:
    """Run a coroutine on one event loop that lives for the whole test."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()
