"""RAM accounting on the real kernel (issue 15): max_total_size counts every overlay's
upper (tmpfs size, zram disksize) and refuses the Create that would pass it, naming the
limit, the sum and the size; the image's free space (ImageSize, ImageFree) is the file
system the image holds, read once per interval, and a commit is seen at once."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from overlayd.config import DaemonConfig
from overlayd.errors import InvalidSpec, LimitExceeded
from overlayd.host.linux import LinuxHost
from overlayd.manager import OverlayManager
from overlayd.model import parse_spec
from overlayd.usage import SpaceCache
from tests import helpers
from tests.kernel.conftest import Env

PER_UPPER = True
MiB = 1 << 20


@pytest.fixture
def limited(env: Env) -> Env:
    """The env's manager, with max_total_size 96M."""
    cfg = env.config.model_copy(update={"max_total_size": str(96 * MiB)})
    env.manager.config = cfg
    return env


def test_creates_beyond_max_total_size_are_refused(limited: Env, image: Path) -> None:
    env = limited
    env.create("a", image, size="64M")
    with pytest.raises(LimitExceeded) as ei:
        env.create("b", image, size="48M")
    text = str(ei.value)
    assert "'b'" in text and "48M" in text and "64M" in text and "96M" in text, text
    assert "max_total_size" in text and "32M is left" in text, text
    assert [r.name for r in env.manager.list()] == ["a"], "nothing of 'b' is left"
    assert not os.path.exists(env.config.runtime_dir / "b")
    env.create("c", image, size="32M")  # exactly up to the limit
    assert env.manager.reserved_total() == 96 * MiB
    env.run(env.manager.discard("a"))
    env.create("b", image, size="48M")  # a discard gives its share back
    assert env.manager.reserved_total() == 80 * MiB


def test_the_default_size_is_counted_as_well(limited: Env, image: Path) -> None:
    limited.create("a", image, size="64M")
    with pytest.raises(LimitExceeded, match="64M"):  # default_size is 64M in this env
        limited.create("b", image)


def test_creates_at_once_never_pass_the_limit_together(limited: Env, image: Path) -> None:
    """Eight Creates of 32M at once under 96M: exactly three are made."""
    env = limited

    async def all_at_once() -> list[Any]:
        specs = [parse_spec({"name": f"r{i}", "image": str(image), "size": "32M",
                             **({"upper": env.upper} if env.upper != "tmpfs" else {})})
                 for i in range(8)]
        return await asyncio.gather(*(env.manager.create(s) for s in specs),
                                    return_exceptions=True)

    results = env.run(all_at_once())
    refused = [r for r in results if isinstance(r, LimitExceeded)]
    assert len(refused) == 5 and len(env.manager.list()) == 3, results
    assert env.manager.reserved_total() == 96 * MiB


def test_a_size_below_the_minimum_is_refused_before_anything(env: Env, image: Path) -> None:
    with pytest.raises(InvalidSpec, match="at least 1M"):
        env.create("tiny", image, size="512K")
    rec = env.create("small", image, size="1M")  # the minimum works, for either kind
    (Path(rec.mountpoint) / "a.txt").write_text("fits\n")
    assert env.run(env.manager.usage("small")).size > 0


def test_image_space_is_the_file_system_the_image_holds(env: Env, root: Path) -> None:
    img = helpers.make_image(root / "space.img", size="64M")
    rec = env.create("s", img, size="32M")
    size, free = env.manager.image_space("s")
    v = os.statvfs(env.paths(rec).lower_dir)
    assert size == v.f_blocks * v.f_frsize and free == v.f_bfree * v.f_frsize
    assert 40 * MiB < size <= 64 * MiB and 0 < free < size
    (Path(rec.mountpoint) / "big").write_bytes(os.urandom(8 * MiB))
    assert env.manager.image_space("s") == (size, free), "the writes are in RAM, not the image"
    env.run(env.manager.commit("s"))
    after = env.manager.image_space("s")
    assert after[0] == size and after[1] <= free - 8 * MiB, "a commit is seen at once"


def test_overlays_of_one_image_read_its_space_once(env: Env, image: Path) -> None:
    env.create("one", image, size="8M")
    env.create("two", image, size="8M")
    reads: list[str] = []
    real = env.manager.host.system.fs_space

    def counted(path: str) -> tuple[int, int]:
        reads.append(path)
        return real(path)

    # the manager's cache, reading through a counter (as GetManagedObjects would, often)
    env.manager._spaces = SpaceCache(counted, time.monotonic, env.config.usage_interval)
    for _ in range(20):
        assert env.manager.image_space("one") == env.manager.image_space("two")
    assert len(reads) == 1, reads


def test_a_directory_lower_shows_its_file_system(env: Env, root: Path) -> None:
    lower = root / "dirlower"
    lower.mkdir()
    env.create("d", lower, size="8M")
    v = os.statvfs(lower)
    size, free = env.manager.image_space("d")
    assert size == v.f_blocks * v.f_frsize
    assert abs(free - v.f_bfree * v.f_frsize) < 64 * MiB  # others write to it meanwhile


def test_a_percent_is_of_memtotal(root: Path, run: Callable[[Any], Any]) -> None:
    mgr = OverlayManager(DaemonConfig(runtime_dir=root / "run"), LinuxHost())
    with open("/proc/meminfo") as f:
        memtotal = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    assert mgr.total_limit() == memtotal * 1024 // 2
