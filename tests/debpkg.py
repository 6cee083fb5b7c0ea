"""The Debian package, built once per test session (tools/deb.sh: fetch, if debian/wheels
is empty, then the offline build), for tests/install and the system tests."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_built: dict[str, Path] = {}


def deb_unavailable() -> str | None:
    for tool in ("dpkg-buildpackage", "dh", "lintian"):
        if shutil.which(tool) is None:
            return f"needs {tool} (make setup-deb)"
    return None


def build_deb() -> Path:
    """The directory holding overlayd_*.deb and overlayd-gtk_*.deb, their .changes, build.log
    and lintian.txt (a temporary directory of the session's, removed at its end)."""
    if "out" in _built:
        return _built["out"]
    why = deb_unavailable()
    if why is not None:
        pytest.fail(f"cannot build the Debian package: {why}", pytrace=False)
    if not list((REPO / "debian/wheels").glob("pydantic-*.whl")):
        r = subprocess.run(["bash", str(REPO / "tools/deb.sh"), "fetch"], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    out = Path(tempfile.mkdtemp(prefix="overlayd-deb-"))
    atexit.register(shutil.rmtree, out, True)
    r = subprocess.run(["bash", str(REPO / "tools/deb.sh"), "build", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    _built["out"] = out
    return out


def the_deb(out: Path) -> Path:
    (deb,) = out.glob("overlayd_*.deb")
    return deb


def the_gtk_deb(out: Path) -> Path:
    (deb,) = out.glob("overlayd-gtk_*.deb")
    return deb
