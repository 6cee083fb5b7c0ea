"""upper = zram on the real kernel: the device, its compressor and sizes, and that every
way out removes the device this daemon added, and no other."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from overlayd.errors import MountFailed, OverlaydError
from overlayd.host.uppers import ZRAM_CONTROL, ZramUpper
from overlayd.model import Upper, UpperKind
from tests import helpers
from tests.kernel.conftest import Env
from tests.kernel.zram_ledger import carries

pytestmark = pytest.mark.skipif(not os.path.exists(ZRAM_CONTROL), reason="no zram")


def _sys(rec_device: str, attr: str) -> str:
    return Path(f"/sys/block/{os.path.basename(rec_device)}/{attr}").read_text().strip()


def test_compressor_size_and_compression_seen_in_usage(env: Env, image: Path) -> None:
    rec = env.create("z", image, upper="zram", compressor="lzo", size="32M")
    assert rec.upper.kind is UpperKind.ZRAM and rec.upper.compressor == "lzo"
    assert "[lzo]" in _sys(rec.upper.device, "comp_algorithm")
    assert _sys(rec.upper.device, "disksize") == str(32 << 20)
    (Path(rec.mountpoint) / "text.txt").write_text("overlayd compresses this line\n" * 40000)
    os.sync()
    usage = env.run(env.manager.usage("z"))
    assert usage.original >= 1 << 20 and 0 < usage.compressed < usage.original
    saved = env.manager.get("z")
    assert saved.upper.device == rec.upper.device and saved.upper.fs_uuid
    env.run(env.manager.discard("z"))
    assert not carries(rec.upper.device, rec.upper.fs_uuid)
    env.zram.assert_clean()


def test_an_unknown_compressor_says_which_there_are(env: Env, image: Path) -> None:
    with pytest.raises(MountFailed, match=r"not offered.*offers: "):
        env.create("z", image, upper="zram", compressor="nope")
    assert env.manager.list() == []  # and the env checks that no device is left


@pytest.mark.parametrize("step", ["_set_compressor", "_mkfs", "_mount", "prepare_upper",
                                  "merge.mount", "merge.verify"])
def test_a_failed_create_removes_the_device_at_every_step(
        env: Env, image: Path, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_a: object, **_k: object) -> None:
        raise MountFailed(f"injected failure at {step}")
    host = env.manager.host
    if step.startswith("_"):
        monkeypatch.setattr(ZramUpper, step, fail)
    elif step == "prepare_upper":
        monkeypatch.setattr(host.layers, "prepare_upper", fail)
    else:
        monkeypatch.setattr(host.merge, step.split(".")[1], fail)
    with pytest.raises(MountFailed, match="injected"):
        env.create("z", image, upper="zram", compressor="lzo")
    assert len(env.zram.added()) == 1  # the device it added (blank, at most steps) is gone
    env.zram.assert_clean()
    assert helpers.mounts_under(str(env.root)) == []
    assert env.manager.list() == []


def test_a_commit_keeps_the_device_and_frees_its_ram(env: Env, image: Path) -> None:
    rec = env.create("z", image, upper="zram")
    (Path(rec.mountpoint) / "big.txt").write_text("some text to keep\n" * 100000)
    os.sync()
    env.run(env.manager.commit("z"))
    after = env.manager.get("z")
    assert after.upper == rec.upper  # the same device, formatted again
    assert (Path(after.mountpoint) / "big.txt").read_text().startswith("some text")
    assert env.run(env.manager.usage("z")).original < 1 << 20  # mkfs discarded the old data


def test_someone_elses_zram_device_is_never_touched(env: Env, image: Path,
                                                    tmp_path: Path) -> None:
    """A device this daemon did not add: a record that names it (a forged or stale one)
    does not make it ours, as long as it does not carry the recorded file system UUID."""
    with open(f"{ZRAM_CONTROL}/hot_add") as f:
        other = int(f.read())
    dev = f"/dev/zram{other}"
    try:
        Path(f"/sys/block/zram{other}/disksize").write_text(str(16 << 20))
        subprocess.run(["mkfs.ext4", "-q", "-O", "^has_journal", dev], check=True)
        z = ZramUpper()
        stale = Upper(kind=UpperKind.ZRAM, size=16 << 20, device=dev,
                      fs_uuid=str(uuid.uuid4()))
        mp = tmp_path / "m"
        mp.mkdir()
        assert z.unmake("x", str(mp), stale) is False
        assert os.path.exists(f"/sys/block/zram{other}")
        # made again: a fresh device, not the stale record's
        made = z.make("x", str(mp), stale)
        try:
            assert made.device != dev
        finally:
            z.unmake("x", str(mp), made)
        assert not carries(made.device, made.fs_uuid)
        env.zram.assert_clean()  # it removed the one it made, and not ours
        rec = env.create("z", image, upper="zram")
        env.run(env.manager.discard("z"))
        assert rec.upper.device != dev and os.path.exists(f"/sys/block/zram{other}")
    finally:
        try:
            Path(f"{ZRAM_CONTROL}/hot_remove").write_text(str(other))
        except OSError as e:
            raise OverlaydError(f"the test's own zram{other} stays: {e}") from None


# --- a copied mount namespace holds the device (issue 16) ---------------------------------

def _hold_copy() -> subprocess.Popen[bytes]:
    """A process in a mount namespace copied from ours now: it keeps every mount there is,
    the zram upper's too, after we unmount it."""
    p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "120"])
    for _ in range(200):  # until the namespace exists (not just the unshare process)
        try:
            if os.readlink(f"/proc/{p.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt") and \
                    Path(f"/proc/{p.pid}/comm").read_text().strip() == "sleep":
                break
        except OSError:
            pass
        time.sleep(0.01)
    return p


def _leftovers(env: Env) -> list[str]:
    where = env.config.runtime_dir / ".zram-leftovers"
    return sorted(os.listdir(where)) if where.exists() else []


def test_a_copy_of_the_default_mount_point_is_let_go_at_once(env: Env, image: Path) -> None:
    """Removing the mount points detaches the copies in other namespaces (the kernel does,
    since 3.18): the device is free before Discard answers, with the copy still alive."""
    rec = env.create("held", image, upper="zram", size="16M")
    holder = _hold_copy()
    try:
        env.run(env.manager.discard("held"))
        assert env.manager.list() == [] and holder.poll() is None
        assert not carries(rec.upper.device, rec.upper.fs_uuid) and _leftovers(env) == []
    finally:
        holder.kill()
        holder.wait()


def test_a_device_held_by_a_copied_namespace_does_not_wedge_discard(
        env: Env, image: Path, root: Path) -> None:
    """A mount point of the caller's (not removed at discard) copied into another
    namespace keeps the overlay there, and with it the zram device: Discard does not wait
    10 s and fail, leaving a failed overlay, as it did; the overlay goes, the device is
    noted, and removed once nothing holds it."""
    mp = root / "view"
    mp.mkdir()
    rec = env.create("held", image, upper="zram", size="16M", mountpoint=str(mp))
    (mp / "w.txt").write_text("in zram\n")
    dev = os.path.basename(rec.upper.device)
    holder = _hold_copy()
    try:
        env.run(env.manager.discard("held"))
        assert env.manager.list() == [], "the overlay is gone, its name is free"
        assert carries(rec.upper.device, rec.upper.fs_uuid), "the copy keeps the device"
        assert _leftovers(env) == [dev]
        assert (env.config.runtime_dir / ".zram-leftovers" / dev).read_text().strip() == \
            rec.upper.fs_uuid
        env.create("held", image, upper="zram", size="16M")  # the name works again
        env.run(env.manager.discard("held"))
        assert _leftovers(env) == [dev], "still held: kept for later"
    finally:
        holder.kill()
        holder.wait()
    # the next zram create (or discard, or start) removes it, now that nothing holds it
    for _ in range(100):  # the namespace goes with its last process, a moment after
        env.create("again", image, upper="zram", size="16M")
        env.run(env.manager.discard("again"))
        if not carries(rec.upper.device, rec.upper.fs_uuid):
            break
    assert not carries(rec.upper.device, rec.upper.fs_uuid) and _leftovers(env) == []


def test_a_restart_removes_a_device_let_go_meanwhile(env: Env, image: Path,
                                                     root: Path) -> None:
    mp = root / "view"
    mp.mkdir()
    rec = env.create("held", image, upper="zram", size="16M", mountpoint=str(mp))
    dev = os.path.basename(rec.upper.device)
    holder = _hold_copy()
    try:
        env.run(env.manager.discard("held"))
    finally:
        holder.kill()
        holder.wait()
    assert _leftovers(env) == [dev]
    for _ in range(100):
        env.manager = env.fresh_manager()
        env.run(env.manager.start())
        if not _leftovers(env):
            break
    assert not carries(rec.upper.device, rec.upper.fs_uuid) and _leftovers(env) == []


def test_a_leftover_entry_never_removes_another_device(env: Env, image: Path) -> None:
    """An entry whose device now carries another file system (or none) is dropped, and
    the device left alone: only the recorded UUID makes a device ours."""
    rec = env.create("mine", image, upper="zram", size="16M")
    dev = os.path.basename(rec.upper.device)
    where = env.config.runtime_dir / ".zram-leftovers"
    where.mkdir()
    (where / dev).write_text(str(uuid.uuid4()) + "\n")  # not the UUID it carries
    env.run(env.manager.start())  # collects: the entry goes, the device stays
    assert _leftovers(env) == [] and carries(rec.upper.device, rec.upper.fs_uuid)
    assert env.manager.get("mine").state.value == "active"


def test_a_forced_discard_of_a_busy_overlay_leaves_the_device_for_later(
        env: Env, image: Path) -> None:
    """A file held open in the overlay keeps its zram device busy after the forced (lazy)
    detach: Discard with force did wait 10 s and fail, leaving a failed overlay; now the
    overlay goes, the device is noted, and removed once the file is closed."""
    rec = env.create("busy", image, upper="zram", size="16M")
    (Path(rec.mountpoint) / "w.txt").write_text("in zram\n")
    dev = os.path.basename(rec.upper.device)
    with open(Path(rec.mountpoint) / "w.txt") as held:
        with pytest.raises(OverlaydError, match="busy"):
            env.run(env.manager.discard("busy"))
        env.run(env.manager.discard("busy", force=True))
        assert env.manager.list() == [], "the overlay is gone, its name is free"
        assert os.path.exists(f"/sys/block/{dev}"), "the open file keeps the device"
        assert _leftovers(env) == [dev]
        assert held.read() == "in zram\n"
    for _ in range(100):  # closed: the next zram create (or discard, or start) removes it
        env.create("again", image, upper="zram", size="16M")
        env.run(env.manager.discard("again"))
        if not os.path.exists(f"/sys/block/{dev}"):
            break
    assert not os.path.exists(f"/sys/block/{dev}") and _leftovers(env) == []
