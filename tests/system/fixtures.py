"""The gate for system tests and a factory of container fixtures.

Usage in a test module::

    from tests.system.fixtures import container_fixture

    def install(root: Path) -> None:
        subprocess.run(["make", "-C", REPO, "install", f"DESTDIR={root}"], check=True)

    overlayd_ct = container_fixture(prepare=install, machine="overlayd-units")

    @pytest.mark.system
    def test_unit(overlayd_ct: Container) -> None:
        overlayd_ct.run("systemctl", "start", "overlayd.service")
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.debpkg import build_deb, the_deb
from tests.system.container import Container

REQUIRE_ENV = "OVERLAYD_REQUIRE_SYSTEM"
REPO = Path(__file__).resolve().parents[2]


def make_install(root: Path) -> None:
    """``make install DESTDIR=ROOT``, as a package would (the venv's pip, no setup run)."""
    r = subprocess.run(["bash", str(REPO / "tools/install.sh")], cwd=REPO, text=True,
                       capture_output=True,
                       env={**os.environ, "DESTDIR": str(root),
                            "PIP": str(REPO / ".venv/bin/pip")})
    assert r.returncode == 0, r.stdout + r.stderr


def deb_install(root: Path) -> None:
    """Install the Debian package into ROOT as an admin would (dpkg -i; tests/debpkg.py
    builds it once per session). The container's root is an overlay of this machine's /, so
    dpkg finds the dependencies that `make setup-deb` installed here; the maintainer scripts
    run chrooted into ROOT, before the container's systemd starts."""
    deb = the_deb(build_deb())
    r = subprocess.run(["dpkg", f"--root={root}", "-i", str(deb)],
                       text=True, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (root / "usr/lib/overlayd/site/pydantic").is_dir()


def system_unavailable() -> str | None:
    """Why a systemd container cannot boot here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "nsenter", "unshare", "setpriv", "losetup"):
        if shutil.which(tool) is None:
            hint = " (apt-get install --no-install-recommends systemd-container)" \
                if tool == "systemd-nspawn" else ""
            return f"needs {tool}{hint}"
    if not Path("/lib/systemd/systemd").exists():
        return "needs systemd installed (it is booted inside the container)"
    if not os.path.exists("/dev/loop-control"):
        return "needs /dev/loop-control"
    with open("/proc/filesystems") as f:
        fs = f.read()
    for need in ("overlay", "tmpfs"):
        if need not in fs:
            return f"the kernel lacks {need}"
    return None


def require_system() -> None:
    """Skip the calling test (fail it under OVERLAYD_REQUIRE_SYSTEM=1) if no container
    can boot here: CI must never pass by skipping system tests."""
    reason = system_unavailable()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"system test cannot run here ({reason}), and {REQUIRE_ENV}=1 "
                    "forbids skipping it", pytrace=False)
    pytest.skip(f"system test: {reason}")


def container_fixture(*, machine: str = "overlayd-test",
                      prepare: Callable[[Path], None] | None = None,
                      binds: Sequence[str] = (),
                      mask: Sequence[str] = (),
                      scope: Literal["session", "package", "module", "class",
                                     "function"] = "module",
                      **boot_kw: Any) -> Any:
    """A fixture that boots one Container (by default once per module) and stops it after
    the last test that uses it.  The stop checks for leftovers (cgroups, mounts, loop
    devices on the container's files) and fails the teardown if there were any."""

    @pytest.fixture(scope=scope)
    def _container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
        require_system()
        workdir = tmp_path_factory.mktemp(f"ct-{machine}")
        ct = Container.boot(workdir, machine=machine, prepare=prepare, binds=binds,
                            mask=mask, **boot_kw)
        try:
            yield ct
        finally:
            ct.stop()

    return _container
