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
from tests.kernel.zram_ledger import LEDGER_ENV, ZramLedger

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


@pytest.fixture
def upper_kind() -> str:
    return "tmpfs"


@pytest.fixture
def merge_engine() -> str:
    return "kernel"


def fuse_servers(root: Path) -> set[int]:
    """PIDs of fuse-overlayfs servers started as overlayd-NAME (argv[0]) over an upper
    under ROOT: the test's own (another test run's come and go meanwhile)."""
    found = set()
    mine = f"upperdir={root}/".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            continue
        if argv.startswith(b"overlayd-") and mine in argv:
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
    zram: ZramLedger
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
def env(root: Path, run: Callable[[Any], Any], upper_kind: str, merge_engine: str,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    cfg = DaemonConfig(runtime_dir=root / "run", default_size=64 << 20,
                       layer_dir=root / "layers")
    # The zram devices this test's daemons add and remove (here and in the children that
    # inherit the variable), not the machine's: others come and go on a busy host.
    zram = ZramLedger(root / "zram-ledger")
    zram.install(monkeypatch.setattr)
    monkeypatch.setenv(LEDGER_ENV, str(zram.path))
    servers_before = fuse_servers(root)
    mgr = OverlayManager(cfg, LinuxHost())
    run(mgr.start())
    e = Env(root, cfg, mgr, run, zram, upper_kind, merge_engine)
    yield e
    for rec in list(e.manager.list()):  # a failed test must not leak into the next one
        run(e.manager.discard(rec.name, force=True))
    # every zram device this test's daemons added is removed, and none other
    zram.assert_clean()
    # no FUSE server of ours outlives its overlay (each ends when its mount goes)
    left = fuse_servers(root) - servers_before
    for _ in range(50):
        if not left:
            break
        time.sleep(0.1)
        left = fuse_servers(root) - servers_before
    assert not left, f"FUSE servers left running: {sorted(left)}"


@pytest.fixture
def image(root: Path) -> Path:
    """A small ext4 image holding /hello.txt and /sub/keep.txt."""
    tree = root / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "hello.txt").write_text("hello from the image\n")
    (tree / "sub" / "keep.txt").write_text("keep me\n")
    return helpers.make_image(root / "disk.img", tree)
