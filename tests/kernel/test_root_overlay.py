"""The daemon's side of the root on an overlay, without a VM: a root overlay laid out as the
initramfs lays it out (packaging/root/lib.sh), under the test's own directory and mounted
there rather than at /, is adopted as the overlay 'root': its usage and Diff work, a plain
Commit is refused with the way out, a commit at shutdown is requested and cancelled, and
the next boot's setting goes where the initramfs or the exitrd reads it."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd.config import DaemonConfig
from overlayd.errors import CommitFailed, InvalidSpec
from overlayd.host.linux import LinuxHost
from overlayd.host.rootfs import RootFs
from overlayd.manager import OverlayManager
from overlayd.model import parse_spec
from tests.helpers import make_image


def sh(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, text=True,
                          capture_output=True).stdout.strip()


@pytest.fixture
def protected(root: Path) -> Iterator[RootFs]:
    """A root overlay as the initramfs leaves it, with STATE, LAYERS and / under ROOT."""
    seed = root / "seed"
    (seed / "etc").mkdir(parents=True)
    (seed / "etc/issue").write_text("Debian\n")
    image = make_image(root / "root.img", seed)
    state, layers, merged = root / "state", root / "layers", root / "merged"
    for d in (state / "lower", layers, merged):
        d.mkdir(parents=True)
    loop = sh("losetup", "-f", "--show", "-r", image)
    done: list[Path] = []
    try:
        sh("mount", "-o", "ro", loop, state / "lower")
        done.append(state / "lower")
        sh("mount", "-t", "tmpfs", "-o", "size=16M,mode=0755", "overlayd-root", layers)
        done.append(layers)
        (layers / "upper").mkdir()
        (layers / "work").mkdir()
        sh("mount", "-t", "overlay", "-o",
           f"lowerdir={state}/lower,upperdir={layers}/upper,workdir={layers}/work,"
           "redirect_dir=off,index=off,metacopy=off,xino=off", "overlayd-root", merged)
        done.append(merged)
        for name, value in (("lowerdev", loop), ("fstype", "ext4"), ("mode", "tmpfs"),
                            ("size", "16M"), ("source", "the kernel command line")):
            (state / name).write_text(value + "\n")
        yield RootFs(state_dir=state, layers_dir=layers, mountpoint=str(merged),
                     setting=root / "etc/overlayd/root.overlay")
    finally:
        for m in reversed(done):
            sh("umount", m)
        sh("losetup", "-d", loop)


@pytest.fixture
def manager(root: Path, protected: RootFs, run: Callable[[Any], Any]) -> OverlayManager:
    mgr = OverlayManager(DaemonConfig(runtime_dir=root / "run"), LinuxHost(), root=protected)
    run(mgr.start())
    return mgr


def test_adopted_as_root_with_usage_and_diff(manager: OverlayManager, protected: RootFs,
                                             run: Callable[[Any], Any]) -> None:
    rec = manager.get("root")
    assert manager.root_overlay() == rec
    assert rec.mountpoint == protected.mountpoint
    assert rec.image == (protected.state_dir / "lowerdev").read_text().strip()
    assert rec.fstype == "ext4" and rec.size == 16 << 20 and rec.owner_uid == 0
    assert rec.created_usec > 0
    merged = Path(protected.mountpoint)
    (merged / "etc/new").write_text("x" * 10000)
    (merged / "etc/issue").unlink()
    assert manager.usage_now("root").used >= 10000
    changes = {(d.path, d.kind) for d in run(manager.diff("root"))}
    assert {("/etc/new", "added"), ("/etc/issue", "deleted")} <= changes


def test_the_root_takes_nothing_from_max_total_size(root: Path, protected: RootFs,
                                                    run: Callable[[Any], Any]) -> None:
    """The initramfs sized the root's tmpfs (by default at half the memory, as
    max_total_size's default): counted, it would leave no room for any other overlay."""
    mgr = OverlayManager(DaemonConfig(runtime_dir=root / "run", max_total_size="16M"),
                         LinuxHost(), root=protected)
    run(mgr.start())
    assert mgr.get("root").size == 16 << 20 and mgr.reserved_total() == 0
    seed = root / "other-seed"
    seed.mkdir()
    image = make_image(root / "other.img", seed)
    run(mgr.create(parse_spec({"name": "other", "image": str(image), "size": "16M"})))
    try:
        assert mgr.reserved_total() == 16 << 20
    finally:
        run(mgr.discard("other"))


def test_commit_is_refused_and_says_how(manager: OverlayManager,
                                        run: Callable[[Any], Any]) -> None:
    with pytest.raises(CommitFailed, match=r"root file system.*option at_shutdown"):
        run(manager.commit("root"))
    assert manager.get("root").state == "active"


def test_commit_at_shutdown_is_requested_then_cancelled_by_discard(
        manager: OverlayManager, protected: RootFs, run: Callable[[Any], Any]) -> None:
    seen: list[str] = []
    manager.subscribe(lambda name, rec: seen.append(name))
    assert not manager.commit_at_shutdown("root")
    run(manager.request_commit_at_shutdown("root", True))
    assert (protected.state_dir / "commit").exists()
    assert manager.commit_at_shutdown("root") and seen == ["root"]
    run(manager.discard("root"))  # nothing is unmounted: the writes go at the next reboot
    assert not (protected.state_dir / "commit").exists()
    assert not manager.commit_at_shutdown("root")
    assert manager.get("root").state == "active"
    assert Path(protected.mountpoint, "etc/issue").exists()


def test_at_shutdown_is_for_the_root_only(manager: OverlayManager, root: Path,
                                          run: Callable[[Any], Any]) -> None:
    img = make_image(root / "other.img")
    run(manager.create(parse_spec({"name": "other", "image": str(img), "size": 8 << 20})))
    try:
        with pytest.raises(InvalidSpec, match="not the root file system"):
            run(manager.request_commit_at_shutdown("other", True))
        assert not manager.commit_at_shutdown("other")
    finally:
        run(manager.discard("other"))


def test_next_boot_setting_on_a_protected_root_goes_through_the_exitrd(
        manager: OverlayManager, protected: RootFs, run: Callable[[Any], Any]) -> None:
    where = run(manager.set_root_at_boot(False))
    assert where == str(protected.state_dir / "next-setting")
    assert 'mode = "off"' in Path(where).read_text()
    assert not protected.setting.exists()
    with pytest.raises(InvalidSpec, match="size"):
        run(manager.set_root_at_boot(True, "lots"))


def test_not_protected(root: Path, run: Callable[[Any], Any]) -> None:
    rootfs = RootFs(state_dir=root / "state", layers_dir=root / "layers",
                    mountpoint=str(root / "merged"), setting=root / "etc/overlayd/root.overlay")
    mgr = OverlayManager(DaemonConfig(runtime_dir=root / "run"), LinuxHost(), root=rootfs)
    run(mgr.start())
    assert mgr.root_overlay() is None and not mgr.is_root("root")
    where = run(mgr.set_root_at_boot(True, "512M"))
    assert where == str(rootfs.setting)
    assert 'mode = "tmpfs"\nsize = "512M"' in rootfs.setting.read_text()


def test_a_failed_commit_at_the_last_shutdown_is_in_the_journal(
        root: Path, protected: RootFs, run: Callable[[Any], Any],
        caplog: pytest.LogCaptureFixture) -> None:
    (protected.state_dir / "last-commit-failed").write_text(
        "2026-01-01 00:00:00 UTC: the commit at shutdown stopped at /big: No space left\n")
    mgr = OverlayManager(DaemonConfig(runtime_dir=root / "run"), LinuxHost(), root=protected)
    with caplog.at_level(logging.INFO, logger="overlayd"):
        run(mgr.start())
    text = caplog.text
    assert "The root file system is protected" in text
    assert "did not finish: 2026-01-01 00:00:00 UTC: the commit at shutdown stopped" in text
