"""Reconfigure on the real kernel: the live tmpfs of an overlay grows and shrinks (a
reconfigure of its superblock, the writes kept, nothing unmounted), a size below what the
writes use is refused with the kernel's limit untouched, and a zram upper's size is named
as fixed. The bus method is tests/bus/test_reconfigure.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from overlayd.errors import InvalidSpec, OverlaydError
from overlayd.host.uppers import ZRAM_CONTROL, TmpfsUpper
from overlayd.model import OverlayState
from overlayd.mountinfo import parse as parse_mountinfo
from tests.kernel.conftest import Env


def tmpfs_size(target: str) -> int:
    v = os.statvfs(target)
    return v.f_blocks * v.f_frsize


def mount_ids(*targets: str) -> dict[str, int]:
    with open("/proc/self/mountinfo") as f:
        table = parse_mountinfo(f.read())
    return {m.target: m.mount_id for m in table if m.target in targets}


def fill(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20) * mib)


def test_a_live_tmpfs_grows_and_shrinks_and_keeps_its_writes(env: Env, image: Path) -> None:
    rec = env.create("grow", image, size="8M")
    p = env.paths(rec)
    before = mount_ids(p.tmpfs_dir, rec.mountpoint)
    fill(Path(rec.mountpoint) / "six.bin", 6)
    with pytest.raises(OSError) as full:  # 8M: six more do not fit
        fill(Path(rec.mountpoint) / "more.bin", 6)
    assert full.value.errno == errno.ENOSPC
    os.unlink(Path(rec.mountpoint) / "more.bin")

    plan = env.run(env.manager.reconfigure("grow", {"size": 32 << 20}))
    assert plan.live == {"size": 32 << 20} and plan.fixed == {}
    assert tmpfs_size(p.tmpfs_dir) == 32 << 20
    fill(Path(rec.mountpoint) / "more.bin", 6)  # fits now
    assert (Path(rec.mountpoint) / "six.bin").stat().st_size == 6 << 20
    assert mount_ids(p.tmpfs_dir, rec.mountpoint) == before  # nothing was remounted anew
    assert env.manager.get("grow").size == 32 << 20
    assert env.manager.get("grow").state is OverlayState.ACTIVE

    os.unlink(Path(rec.mountpoint) / "more.bin")
    env.run(env.manager.reconfigure("grow", {"size": 16 << 20}))
    assert tmpfs_size(p.tmpfs_dir) == 16 << 20
    assert env.run(env.manager.usage("grow")).size == 16 << 20
    # the record on disk says so too: a restarted daemon adopts the new size
    again = env.fresh_manager()
    env.run(again.start())
    assert again.get("grow").size == 16 << 20


def test_below_what_the_writes_use_is_refused(env: Env, image: Path) -> None:
    rec = env.create("small", image, size="16M")
    fill(Path(rec.mountpoint) / "ten.bin", 10)
    with pytest.raises(InvalidSpec, match=r"its writes use 10(\.\d+)?M"):
        env.run(env.manager.reconfigure("small", {"size": 4 << 20}))
    assert tmpfs_size(env.paths(rec).tmpfs_dir) == 16 << 20
    assert env.manager.get("small").size == 16 << 20
    assert (Path(rec.mountpoint) / "ten.bin").stat().st_size == 10 << 20


def test_the_kernel_refuses_too_small_a_size_itself(env: Env, image: Path) -> None:
    """Between our check and the remount writes may come: the kernel's own refusal is a
    clear error too, and changes nothing."""
    rec = env.create("race", image, size="16M")
    fill(Path(rec.mountpoint) / "ten.bin", 10)
    target = env.paths(rec).tmpfs_dir
    with pytest.raises(OverlaydError, match=r"[Tt]oo small"):
        TmpfsUpper().resize("race", target, rec.upper, 4 << 20)
    assert tmpfs_size(target) == 16 << 20


@pytest.mark.skipif(not os.path.exists(ZRAM_CONTROL), reason="no zram")
def test_a_zram_upper_size_is_named_as_fixed(env: Env, image: Path) -> None:
    rec = env.create("z", image, upper="zram", size="32M")
    plan = env.run(env.manager.reconfigure("z", {"size": 64 << 20}))
    assert plan.live == {} and "zram" in plan.fixed["size"]
    assert env.manager.get("z").size == 32 << 20
    assert Path(f"/sys/block/{os.path.basename(rec.upper.device)}/disksize").read_text() \
        .strip() == str(32 << 20)
