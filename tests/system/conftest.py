"""System tests: overlayd's systemd units in a throw-away container booting real systemd.

Each test module gets its containers from ``container_fixture`` (tests/system/fixtures.py);
``booted_container`` below is the plain one, with nothing installed.  Tests skip unless
root and systemd-nspawn are available, and fail instead when OVERLAYD_REQUIRE_SYSTEM=1.
"""

from __future__ import annotations

import pytest

from tests.system.fixtures import container_fixture


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "system: boots a systemd container (root, systemd-nspawn, loop devices, overlayfs); "
        "skipped elsewhere unless OVERLAYD_REQUIRE_SYSTEM=1",
    )


# A module-scoped container with the host's own systemd and nothing of overlayd's.
booted_container = container_fixture(machine="overlayd-test")
