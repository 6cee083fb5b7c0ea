"""The state follows the mount table on the real kernel (issue 11): an overlay unmounted
from outside is "unmounted" with its journal event, and Discard cleans up; a boot overlay
whose mount units come up after the daemon started is adopted at once."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest

from overlayd.events import Event
from overlayd.host.linux import LinuxHost
from overlayd.manager import OverlayManager
from overlayd.model import OverlayState
from tests import helpers
from tests.kernel.conftest import Env
from tests.kernel.test_boot_overlay import boot_overlay

PER_ENGINE = True  # every test here runs with engine = "kernel" and engine = "fuse"


async def until(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    """A generous bound that only detects a hang; no time is asserted."""
    for _ in range(3000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_umount_from_outside_then_discard(env: Env, image: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    rec = env.create("demo", image)
    (Path(rec.mountpoint) / "w.txt").write_text("in RAM\n")
    seen: list[str] = []
    env.manager.subscribe(lambda n, r: seen.append(r.state.value if r else "gone"))

    async def go() -> None:
        env.manager.watch_mounts()
        subprocess.run(["umount", rec.mountpoint], check=True)  # someone else's umount
        await until(lambda: env.manager.get("demo").state is OverlayState.UNMOUNTED,
                    "state unmounted")
        env.manager.unwatch_mounts()

    with caplog.at_level(logging.INFO, logger="overlayd"):
        env.run(go())
    assert seen == ["unmounted"]
    events = [r for r in caplog.records if getattr(r, "OVERLAYD_EVENT", None)
              == Event.UNMOUNTED]
    assert len(events) == 1 and events[0].OVERLAYD_NAME == "demo"
    env.run(env.manager.discard("demo"))
    assert helpers.mounts_under(str(env.root)) == []
    assert not [d for d, f in helpers.attached_loops().items() if f == str(image)]


def test_commit_mounts_an_unmounted_overlay_again(env: Env, image: Path) -> None:
    rec = env.create("demo", image)
    (Path(rec.mountpoint) / "w.txt").write_text("kept\n")
    subprocess.run(["umount", rec.mountpoint], check=True)
    assert env.run(env.manager.check_mounts()) == ["demo"]
    assert env.manager.get("demo").state is OverlayState.UNMOUNTED
    env.run(env.manager.commit("demo"))
    assert env.manager.get("demo").state is OverlayState.ACTIVE
    assert (Path(rec.mountpoint) / "w.txt").read_text() == "kept\n"
    env.run(env.manager.discard("demo"))


def test_a_boot_overlay_that_comes_up_later_is_adopted(env: Env, image: Path) -> None:
    file = env.root / "late.overlay"
    file.write_text(f'image = "{image}"\nsize = "32M"\nboot = true\n')
    from overlayd import overlayfile
    spec = overlayfile.load(file).spec("late")
    mgr = OverlayManager(env.config, LinuxHost())
    env.run(mgr.start({"late": spec}))
    assert mgr.list() == []
    env.manager = mgr

    async def go() -> None:
        mgr.watch_mounts()
        await asyncio.to_thread(boot_overlay, env, image, "late")  # its mount units
        await until(lambda: [r.name for r in mgr.list()] == ["late"], "adoption")
        mgr.unwatch_mounts()

    env.run(go())
    rec = mgr.get("late")
    assert rec.state is OverlayState.ACTIVE and rec.loop_device.startswith("/dev/loop")
    env.run(mgr.discard("late"))
    assert helpers.mounts_under(str(env.root)) == []
