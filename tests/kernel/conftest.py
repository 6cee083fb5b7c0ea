"""Fixtures for real-kernel tests: an engine on LinuxHost under the test's own root."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overlayd.config import DaemonConfig
from overlayd.host.imagelocks import LinuxImageLocks
from overlayd.host.linux import LinuxHost
from overlayd.layout import Layout
from overlayd.manager import OverlayManager
from overlayd.model import Overlay, parse_spec
from tests import helpers

UPPERS = ["tmpfs", "zram"]
ENGINES = ["kernel", "fuse"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module with PER_UPPER = True runs each test once per upper kind (the env's
    overlays get that ``upper`` unless a test names one); with PER_ENGINE = True, once
    per merge engine (kernel overlayfs, fuse-overlayfs) likewise. Not the product of
    the two: the FUSE runs use a tmpfs upper."""
    upper = getattr(metafunc.module, "PER_UPPER", False) and "upper_kind" in metafunc.fixturenames
    engine = getattr(metafunc.module, "PER_ENGINE", False) and \
        "merge_engine" in metafunc.fixturenames
    if upper and engine:
        metafunc.parametrize(("upper_kind", "merge_engine"),
                             [(u, "kernel") for u in UPPERS] + [("tmpfs", "fuse")],
                             ids=[*UPPERS, "fuse"])
    elif upper:
        metafunc.parametrize("upper_kind", UPPERS)
    elif engine:
        metafunc.parametrize("merge_engine", ENGINES)


def zram_devices() -> set[str]:
    return {d for d in os.listdir("/sys/block") if d.startswith("zram")}


@pytest.fixture
def upper_kind() -> str:
    return "tmpfs"


@pytest.fixture
def merge_engine() -> str:
    return "kernel"


def fuse_servers() -> set[int]:
    """PIDs of fuse-overlayfs servers started as overlayd-NAME (argv[0])."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0.startswith(b"overlayd-"):
            found.add(int(pid))
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


@dataclass(frozen=True)
class Paths:
    base_dir: str
    lower_dir: str
    tmpfs_dir: str
    upper_dir: str
    work_dir: str

    @classmethod
    def of(cls, layout: Layout, rec: Overlay | None = None) -> Paths:
        lower = layout.lower_of(rec.lowers[0]) if rec is not None else layout.lower
        return cls(str(layout.base), str(lower), str(layout.upper_mount),
                   str(layout.upper), str(layout.work))


@dataclass
class Env:
    root: Path
    config: DaemonConfig
    manager: OverlayManager
    run: Callable[[Any], Any]
    upper: str = "tmpfs"
    engine: str = "kernel"

    def create(self, name: str, image: Path | str | None = None, **spec: Any) -> Overlay:
        data = {"name": name, **({"upper": self.upper} if self.upper != "tmpfs" else {}),
                **({"engine": self.engine} if self.engine != "kernel" else {}), **spec}
        if image is not None:
            data["image"] = str(image)
        rec: Overlay = self.run(self.manager.create(parse_spec(data)))
        return rec

    def paths(self, rec: Overlay) -> Paths:
        """Where REC's parts live (derived, no longer stored in the record)."""
        return Paths.of(Layout.for_overlay(self.config.runtime_dir, rec.name), rec)

    def drop_locks(self) -> None:
        """Let go of this process's image locks, as a daemon that died would: the image
        is another process's to lock now (the tests' child daemons)."""
        locks = LinuxImageLocks()
        for dev, ino in locks.held():
            locks.release(dev, ino)

    def fresh_manager(self) -> OverlayManager:
        """A second daemon over the same runtime directory (as after a restart)."""
        return OverlayManager(self.config, LinuxHost())


@pytest.fixture
def env(root: Path, run: Callable[[Any], Any], upper_kind: str,
        merge_engine: str) -> Iterator[Env]:
    cfg = DaemonConfig(runtime_dir=root / "run", default_size=64 << 20,
                       layer_dir=root / "layers")
    zram_before = zram_devices()
    servers_before = fuse_servers()
    mgr = OverlayManager(cfg, LinuxHost())
    run(mgr.start())
    e = Env(root, cfg, mgr, run, upper_kind, merge_engine)
    yield e
    for rec in list(e.manager.list()):  # a failed test must not leak into the next one
        run(e.manager.discard(rec.name, force=True))
    # no zram device of ours is left, and none that was there before has gone
    assert zram_devices() == zram_before, "zram devices: before " \
        f"{sorted(zram_before)}, after {sorted(zram_devices())}"
    # no FUSE server of ours outlives its overlay (each ends when its mount goes)
    left = fuse_servers() - servers_before
    for _ in range(50):
        if not left:
            break
        time.sleep(0.1)
        left = fuse_servers() - servers_before
    assert not left, f"FUSE servers left running: {sorted(left)}"


@pytest.fixture
def image(root: Path) -> Path:
    """A small ext4 image holding /hello.txt and /sub/keep.txt."""
    tree = root / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "hello.txt").write_text("hello from the image\n")
    (tree / "sub" / "keep.txt").write_text("keep me\n")
    return helpers.make_image(root / "disk.img", tree)
