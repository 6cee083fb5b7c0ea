"""Self-test of the container harness: it boots, runs what the system tests need, and
leaves nothing behind, also when a test or the preparation fails."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.system.container import (
    CGROUP_PREFIX,
    Container,
    ContainerError,
    attached_loops,
    mounts_under,
    own_cgroup_dirs,
)
from tests.system.fixtures import require_system

pytestmark = pytest.mark.system


def _cgroups_named(machine: str) -> list[Path]:
    return [d for d in own_cgroup_dirs() if d.name.startswith(f"{CGROUP_PREFIX}{machine}-")]


def assert_nothing_left(ct: Container) -> None:
    assert ct.proc is not None and ct.proc.poll() is not None, "nspawn still runs"
    assert mounts_under(ct.workdir) == []
    assert _cgroups_named(ct.machine) == []
    assert not (ct.workdir / "root").exists() and not (ct.workdir / "tmpfs").exists()


def test_booted(booted_container: Container) -> None:
    ct = booted_container
    assert ct.boot_state == "running", ct.failed_units()
    assert ct.run("systemctl", "is-system-running").stdout.strip() == "running"
    assert ct.run("hostname").stdout.strip() == "overlayd-test"
    # PID 1 of the container is systemd, and not the host's init
    assert ct.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    assert Path(f"/proc/{ct.leader}/comm").read_text().strip() == "systemd"


def test_transient_unit_and_journal(booted_container: Container) -> None:
    ct = booted_container
    marker = f"selftest-{os.getpid()}-{time.monotonic_ns()}"
    r = ct.run("systemd-run", "--wait", "--quiet", "--pipe", "--unit=selftest-echo",
               "-p", "Type=oneshot", "/bin/sh", "-c", f"echo {marker}; id -u")
    assert r.stdout.split() == [marker, "0"]
    out = ct.run("journalctl", "--no-pager", "-o", "cat", "-u", "selftest-echo").stdout
    assert marker in out
    failed = ct.run("systemd-run", "--wait", "--quiet", "-p", "Type=oneshot", "/bin/false",
                    check=False)
    assert failed.returncode != 0


def test_loop_device_in_container(booted_container: Container) -> None:
    ct = booted_container
    ct.run("truncate", "-s", "16M", "/tmp/selftest.img")
    dev = ct.run("losetup", "-f", "--show", "/tmp/selftest.img").stdout.strip()
    try:
        assert dev.startswith("/dev/loop")
        assert dev in attached_loops()  # a real loop device of the host's kernel
        listed = ct.run("losetup", "--noheadings", "--output", "BACK-FILE", dev).stdout
        assert listed.strip() == "/tmp/selftest.img"
    finally:
        ct.run("losetup", "--detach", dev)
    assert dev not in attached_loops()


def test_host_side_access(booted_container: Container) -> None:
    ct = booted_container
    r = subprocess.run(["busctl", f"--address={ct.bus_address}", "list", "--no-pager",
                        "--no-legend"], capture_output=True, text=True, check=True, timeout=30)
    names = {line.split()[0] for line in r.stdout.splitlines()}
    assert {"org.freedesktop.DBus", "org.freedesktop.systemd1"} <= names
    # the root file system, both ways
    (ct.root / "etc/selftest.txt").write_text("from the host\n")
    assert ct.run("cat", "/etc/selftest.txt").stdout == "from the host\n"
    ct.run("sh", "-c", "echo from the container > /etc/selftest2.txt")
    assert (ct.root / "etc/selftest2.txt").read_text() == "from the container\n"
    assert not Path("/etc/selftest2.txt").exists()  # the host's /etc is untouched


def test_run_as_user(booted_container: Container) -> None:
    ct = booted_container
    assert ct.run("id", "-u", uid=65534).stdout.strip() == "65534"
    assert ct.run("id", "-G", uid=65534).stdout.strip() == "65534"
    r = ct.run("cat", "-", input="piped\n", uid=1)
    assert r.stdout == "piped\n"
    r = ct.run("sh", "-c", "echo oops >&2; exit 3", check=False)
    assert (r.returncode, r.stderr) == (3, "oops\n")
    with pytest.raises(subprocess.CalledProcessError, match="oops"):
        ct.run("sh", "-c", "echo oops >&2; exit 3")
    with pytest.raises(subprocess.TimeoutExpired):
        ct.run("sleep", "30", timeout=0.5)
    # the timed-out command was killed in the container too
    assert "sleep 30" not in ct.run("ps", "-eo", "args").stdout


def test_prepare_binds_and_stop(tmp_path: Path) -> None:
    """A full cycle: prepare installs a unit, a host dir is bound in read-only; then stop()
    and the check that nothing is left.  Prints the times."""
    require_system()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("bound\n")

    def prepare(root: Path) -> None:
        (root / "etc/systemd/system/selftest.service").write_text(
            "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            "ExecStart=/bin/cp /srv/shared/data.txt /run/selftest-copy\n"
            "[Install]\nWantedBy=multi-user.target\n")
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        (wants / "selftest.service").symlink_to("../selftest.service")

    t0 = time.monotonic()
    ct = Container.boot(tmp_path / "ct", machine="selftest-cycle", prepare=prepare,
                        binds=[f"{shared}:/srv/shared"])
    try:
        assert ct.boot_state == "running", ct.failed_units()
        assert ct.run("systemctl", "is-active", "selftest.service").stdout.strip() == "active"
        assert (ct.root / "run/selftest-copy").read_text() == "bound\n"
        r = ct.run("touch", "/srv/shared/new", check=False)
        assert r.returncode != 0 and "Read-only" in r.stderr
        leader = ct.leader
    finally:
        ct.stop()
    total = time.monotonic() - t0
    assert ct.forced is None, ct.forced
    assert not Path(f"/proc/{leader}").exists()
    assert_nothing_left(ct)
    ct.stop()  # idempotent
    with pytest.raises(ContainerError):
        ct.run("true")
    print(f"\ncontainer boot {ct.boot_seconds:.2f} s, stop {ct.stop_seconds:.2f} s, "
          f"cycle {total:.2f} s")


def test_failing_prepare_leaves_nothing(tmp_path: Path) -> None:
    require_system()
    seen: list[Path] = []

    def prepare(root: Path) -> None:
        (root / "etc/selftest-prepare").write_text("x")  # the root is writable here
        seen.append(root)
        raise RuntimeError("prepare failed on purpose")

    workdir = tmp_path / "ct"
    with pytest.raises(RuntimeError, match="on purpose"):
        Container.boot(workdir, machine="selftest-badprep", prepare=prepare)
    assert seen and not seen[0].exists()  # the namespace holding it is gone
    assert mounts_under(workdir) == []
    assert _cgroups_named("selftest-badprep") == []
    assert "aborted before boot" in (workdir / "nspawn.log").read_text()
    assert not Path("/etc/selftest-prepare").exists()


def test_boot_timeout_cleans_up(tmp_path: Path) -> None:
    """A boot that never finishes: a clear error with the log, and nothing left."""
    require_system()

    def prepare(root: Path) -> None:
        (root / "etc/systemd/system/selftest-hang.service").write_text(
            "[Service]\nType=oneshot\nExecStart=/bin/sleep infinity\n")
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        (wants / "selftest-hang.service").symlink_to("../selftest-hang.service")

    workdir = tmp_path / "ct"
    with pytest.raises(ContainerError, match="did not finish booting") as err:
        Container.boot(workdir, machine="selftest-hang", prepare=prepare, timeout=3)
    assert "selftest-hang.service" in str(err.value)  # the pending job is named
    assert mounts_under(workdir) == []
    assert _cgroups_named("selftest-hang") == []


def test_stop_forces_a_stuck_container(tmp_path: Path) -> None:
    """A unit that ignores SIGTERM and a stray process: stop() escalates to killing by PID,
    and still leaves nothing."""
    require_system()
    with Container.boot(tmp_path / "ct", machine="selftest-stuck") as ct:
        ct.run("systemd-run", "--unit=stubborn", "-p", "TimeoutStopSec=infinity",
               "-p", "KillSignal=SIGCONT", "-p", "FinalKillSignal=SIGCONT",
               "/bin/sh", "-c", "trap '' TERM; exec sleep infinity")
        stray = subprocess.Popen(["nsenter", "-t", str(ct.leader), "-a", "sleep", "1000"])
        t0 = time.monotonic()
        ct.stop(timeout=1)
        assert time.monotonic() - t0 < 8
    assert ct.forced is not None and "no clean poweroff" in ct.forced
    assert stray.wait(5) != 0  # killed with the container's PID namespace
    assert_nothing_left(ct)
