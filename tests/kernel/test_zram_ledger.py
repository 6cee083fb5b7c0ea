"""The tests' zram leak check (tests/kernel/zram_ledger.py) on the real kernel: zram
devices of other processes that come and go during a test do not count; a device the
test's own daemon leaves (here, in a child daemon, blank or formatted) still fails it, and
so does one it removes that was not its own. tests/zram_churn.py runs whole test files
beside such a neighbour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from overlayd.errors import MountFailed
from overlayd.host import uppers
from overlayd.host.uppers import ZRAM_CONTROL, ZramUpper
from tests import helpers
from tests.kernel.conftest import Env
from tests.kernel.zram_ledger import ZramLedger, carries
from tests.zram_churn import hot_add, hot_remove

pytestmark = pytest.mark.skipif(not Path(ZRAM_CONTROL).exists(), reason="no zram")

ROOT = Path(__file__).resolve().parents[2]


def test_devices_of_others_coming_and_going_do_not_count(env: Env, image: Path) -> None:
    """Another process adds a device while the overlay lives, takes the number its
    discard gives back (the kernel hands out the lowest free one) and removes the one it
    had before: the machine's set of devices is not what it was, and nothing leaked."""
    foreign: list[int] = []  # a neighbour's: this test's own raw hot_adds, not the daemon's
    try:
        rec = env.create("z", image, upper="zram", size="16M")
        foreign.append(hot_add())
        env.run(env.manager.discard("z"))
        foreign.append(hot_add())
        hot_remove(foreign.pop(0))
        assert not carries(rec.upper.device, rec.upper.fs_uuid)
        env.zram.assert_clean()
    finally:
        for zid in foreign:
            hot_remove(zid)


@pytest.mark.parametrize("way", ["discard", "failed create"])
def test_a_device_its_daemon_does_not_remove_is_caught(
        env: Env, image: Path, monkeypatch: pytest.MonkeyPatch, way: str) -> None:
    """The fault: hot_remove skipped. The device left (formatted after a discard, blank
    after a create that failed before mkfs) is named, whatever else comes and goes."""
    real = ZramUpper._hot_remove
    monkeypatch.setattr(ZramUpper, "_hot_remove", lambda self, zid, **_: None)
    if way == "discard":
        rec = env.create("z", image, upper="zram", size="16M")
        env.run(env.manager.discard("z"))
        assert carries(rec.upper.device, rec.upper.fs_uuid)
    else:
        def fail(*_a: object, **_k: object) -> None:
            raise MountFailed("injected failure at mkfs")
        monkeypatch.setattr(ZramUpper, "_mkfs", fail)
        with pytest.raises(MountFailed, match="injected"):
            env.create("z", image, upper="zram", size="16M")
    [zid] = env.zram.added()
    assert env.zram.leaks() == [f"added /dev/zram{zid} and did not remove it"]
    with pytest.raises(AssertionError, match=f"/dev/zram{zid}"):
        env.zram.assert_clean()
    monkeypatch.setattr(ZramUpper, "_hot_remove", real)
    ZramUpper()._hot_remove(zid)  # ours: removed through the ledger, the env's check passes


def test_a_device_a_child_daemon_leaves_is_caught(env: Env) -> None:
    """A daemon in a child process (as tests/kernel/crashing.py, killed -9) logs to the
    test's ledger through the environment."""
    code = ("from tests.kernel.zram_ledger import install_from_environment as i; i()\n"
            "from overlayd.host.uppers import ZramUpper; print(ZramUpper()._hot_add())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    zid = int(out)
    assert env.zram.leaks() == [f"added /dev/zram{zid} and did not remove it"]
    ZramUpper()._hot_remove(zid)  # here, through the ledger: what a restarted daemon does
    env.zram.assert_clean()


def test_removing_a_device_it_did_not_add_is_caught(root: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = ZramLedger(root / "ledger")
    ledger.install(monkeypatch.setattr)
    other = hot_add()  # not through the daemon's code: someone else's
    try:
        helpers.wait_for(lambda: uppers._try_remove(other), what=f"/dev/zram{other} removed")
    finally:
        if Path(f"/sys/block/zram{other}").exists():
            hot_remove(other)
    assert ledger.leaks() == [f"removed /dev/zram{other}, which it did not add"]
