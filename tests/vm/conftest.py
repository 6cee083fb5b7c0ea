"""The root file system on an overlay: the guest (a Debian 12 tree with overlayd installed
and its initramfs built by the guest's own update-initramfs), shared by the no-VM tests of
the initramfs scripts and the VM tests. They skip where the guest cannot be built or booted
(no root, no qemu, no mmdebstrap), and fail instead when OVERLAYD_REQUIRE_VM=1 (.ci/run):
CI must never pass by skipping them. `tools/setup.sh --vm` (make test) installs what they
need and caches the Debian tree."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.guest import REQUIRE_ENV, Guest, unavailable


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vm: boots a Debian 12 guest under qemu (TCG); skipped where qemu or "
        "mmdebstrap are missing unless OVERLAYD_REQUIRE_VM=1")


def gate(*, boot: bool = False) -> None:
    """Skip (or fail, under OVERLAYD_REQUIRE_VM=1) where the guest cannot be built, or with
    BOOT booted."""
    reason = unavailable(boot=boot)
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"the root-on-overlay tests cannot run here ({reason}), and "
                    f"{REQUIRE_ENV}=1 forbids skipping them", pytrace=False)
    pytest.skip(f"root-on-overlay guest: {reason}")


@pytest.fixture(scope="session")
def qemu() -> None:
    gate(boot=True)


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    gate()
    work: Path = tmp_path_factory.mktemp("guest")
    yield Guest(work).build()
