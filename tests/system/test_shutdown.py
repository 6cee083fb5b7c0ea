"""Poweroff with live overlays: on_stop = "commit" reaches the image before the bus and the
daemon go away, on_stop = "discard" throws the writes away, and nothing stays attached.

The images live on the host (bound into the container), so they can be read after the
container is gone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import helpers
from tests.system.container import Container
from tests.system.fixtures import deb_install, require_system

pytestmark = pytest.mark.system
INSIDE = "/var/lib/overlayd-shutdown"


def _install(root: Path) -> None:
    deb_install(root)
    etc = root / "etc/overlayd"
    (etc / "keep.overlay").write_text(f'image = "{INSIDE}/keep.img"\non_stop = "commit"\n')
    (etc / "toss.overlay").write_text(f'image = "{INSIDE}/toss.img"\n')
    # A boot overlay (mount units, no daemon needed) whose writes must survive poweroff.
    (etc / "early.overlay").write_text(
        f'image = "{INSIDE}/early.img"\nboot = true\non_stop = "commit"\n')


def _in_image(image: Path, path: str) -> str | None:
    r = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                       text=True)
    return None if "File not found" in r.stderr else r.stdout


def test_poweroff_runs_each_on_stop(tmp_path: Path) -> None:
    require_system()
    images = tmp_path / "images"
    images.mkdir()
    for name in ("keep", "toss", "early"):
        helpers.make_image(images / f"{name}.img", size="32M")
    ct = Container.boot(tmp_path / "ct", machine="overlayd-shutdown", prepare=_install,
                        rw_binds=[f"{images}:{INSIDE}"])
    try:
        for name in ("keep", "toss"):
            ct.run("systemctl", "start", f"overlayd@{name}.service")
            ct.run("sh", "-c", f"echo {name} > /run/overlayd/mnt/{name}/{name}.txt")
        # The generator pulled in overlayd@early (ordered after its mounts), which found
        # the boot overlay adopted by the daemon.
        ct.run("systemctl", "is-active", "--quiet", "overlayd@early.service")
        ct.run("sh", "-c", "echo precious > /run/overlayd/mnt/early/precious.txt")
    finally:
        ct.stop()  # a clean poweroff: every unit stops in order
    assert _in_image(images / "keep.img", "/keep.txt") == "keep\n"
    assert _in_image(images / "toss.img", "/toss.txt") is None
    # Committed before its mount units were stopped (issue 11: it was lost, silently).
    assert _in_image(images / "early.img", "/precious.txt") == "precious\n"
    assert not [d for d, b in helpers.attached_loops().items() if b.startswith(str(images))]
