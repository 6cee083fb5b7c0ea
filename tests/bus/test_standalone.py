"""``overlayd --standalone`` on a busy host and after a kill -9.

Every daemon here runs under tests/bus/launch.py, a child subreaper: what the daemon leaves
running when it dies comes back to it, so "the launcher exited" means "nothing the daemon
started is left". The busy mount tables live in the launcher's private mount namespace;
the host's mount table is never touched.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlayd.mountinfo import MountInfo, parse
from tests.bus.conftest import MANAGER, VENV_BIN

LAUNCH = Path(__file__).with_name("launch.py")
HANG = 60  # seconds: only to turn a hang into a failure, never a performance bound


@dataclass
class Launched:
    launcher: subprocess.Popen[str]
    daemon: int  # overlayd's PID
    address: str
    log: Path

    @property
    def bus_dir(self) -> Path:
        return Path(self.address.removeprefix("unix:path=")).parent

    def call(self, member: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["busctl", "--system", "call", *MANAGER, member, *args],
                              env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address),
                              capture_output=True, text=True, timeout=60, check=False)


def _stat(pid: int) -> tuple[int, str, str, int] | None:
    """(ppid, comm, state, start time) of PID, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), text[text.index("(") + 1:text.rindex(")")], fields[0], \
        int(fields[19])


def descendants(pid: int) -> dict[int, tuple[str, int]]:
    """PID -> (comm, start time) of every live descendant of PID."""
    parents: dict[int, int] = {}
    info: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[2] != "Z":
            parents[int(entry)] = st[0]
            info[int(entry)] = (st[1], st[3])
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                found[child] = info[child]
                todo.append(child)
    return found


def still_running(procs: dict[int, tuple[str, int]]) -> list[str]:
    """Those of PROCS still running: same PID and start time, not a zombie."""
    left = []
    for pid, (comm, start) in procs.items():
        st = _stat(pid)
        if st is not None and st[3] == start and st[2] != "Z":
            left.append(f"{comm} ({pid})")
    return left


def launch(root: Path, *, mounts: Path | None = None) -> Launched:
    root.mkdir(exist_ok=True)
    log = root / "overlayd.log"
    pre = ["--mounts", str(mounts)] if mounts is not None else []
    with open(log, "a") as err:
        launcher = subprocess.Popen(
            [sys.executable, str(LAUNCH), *pre, "--", str(VENV_BIN / "overlayd"),
             "--standalone", "--runtime-dir", str(root / "run")],
            stdout=subprocess.PIPE, stderr=err, text=True)
    assert launcher.stdout is not None
    ready, _, _ = select.select([launcher.stdout], [], [], HANG)
    line = launcher.stdout.readline().strip() if ready else ""
    children = [p for p, (comm, _) in descendants(launcher.pid).items() if comm == "overlayd"]
    if not line.startswith("DBUS_SYSTEM_BUS_ADDRESS=") or len(children) != 1:
        stop(Launched(launcher, children[0] if children else 0, "", log))
        raise AssertionError(f"overlayd did not start: {line!r}\n{log.read_text()}")
    return Launched(launcher, children[0], line.split("=", 1)[1], log)


def stop(d: Launched, signo: int = signal.SIGTERM) -> None:
    """Stop the daemon we started (by PID), then wait for the launcher: it exits once
    nothing the daemon started runs. Whatever is left after HANG is killed by PID."""
    procs = descendants(d.launcher.pid)
    if d.daemon:
        with contextlib.suppress(ProcessLookupError):
            os.kill(d.daemon, signo)
    try:
        d.launcher.wait(HANG)
    except subprocess.TimeoutExpired:
        for pid, (_comm, start) in procs.items():
            st = _stat(pid)
            if st is not None and st[3] == start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        d.launcher.kill()
        d.launcher.wait()
        raise


@pytest.fixture
def launched() -> Iterator[list[Launched]]:
    """Daemons a test launched; any still running at its end are stopped."""
    daemons: list[Launched] = []
    yield daemons
    for d in daemons:
        if d.launcher.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                stop(d)


def _wait_until(predicate: Callable[[], bool], what: str,
                detail: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + HANG
    while not predicate():
        assert time.monotonic() < deadline, f"still waiting, after {HANG} s, for {what}" \
            f"{detail()}"
        time.sleep(0.05)


# ------------------------------------------------------------------ a busy mount table

OURS = 1000  # tmpfs with source overlayd-x<N>: as many as the review's busy host had


def _busy_table(root: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """Mount points and a spec for launch.py: OURS tmpfs that look like overlayd's (long
    paths, so that their list alone is over the 128 KiB a single argument may have), an
    image mount of another overlayd's overlay, and foreign mounts: some with /dev/loop
    sources, one image-like mount outside any runtime directory."""
    busy = root / "busy"
    ours: dict[str, str] = {}
    foreign: dict[str, str] = {}
    for i in range(OURS):
        ours[str(busy / "ours" / f"{i:04d}-{'p' * 120}")] = f"overlayd-x{i}"
    for i in range(3):  # another overlayd's overlay: its tmpfs names its image mount
        base = busy / "other-run" / f"o{i}"
        ours[str(base / "rw")] = f"overlayd-o{i}"
        ours[str(base / "lower")] = f"/dev/loop{70000 + i}"
    for i in range(50):
        foreign[str(busy / "foreign" / f"f{i}")] = f"foreign-{i}"
    for i in range(20):
        foreign[str(busy / "loops" / f"l{i}")] = f"/dev/loop{60000 + i}"
    foreign[str(busy / "elsewhere" / "x" / "lower")] = "/dev/loop60100"
    foreign[str(busy / "other-run" / "o0" / "lower2")] = "/dev/loop60101"
    spec = root / "mounts.txt"
    with open(spec, "w") as f:
        for target, source in sorted({**ours, **foreign}.items()):
            Path(target).mkdir(parents=True, exist_ok=True)
            f.write(f"{source} {target}\n")
    return spec, ours, foreign


def _mounts_of(pid: int) -> list[MountInfo]:
    return parse(Path(f"/proc/{pid}/mountinfo").read_text())


def test_polkitd_starts_on_a_busy_host_without_overlayd_mounts(
        root: Path, launched: list[Launched]) -> None:
    spec, ours, foreign = _busy_table(root)
    d = launch(root / "d", mounts=spec)  # the ready line comes once polkitd is on the bus
    launched.append(d)
    polkitd = [p for p, (comm, _) in descendants(d.launcher.pid).items() if comm == "polkitd"]
    assert len(polkitd) == 1, descendants(d.launcher.pid)
    seen = {m.target: m for m in _mounts_of(polkitd[0])}
    assert not [t for t in ours if t in seen], "overlayd's mounts stay detached for polkitd"
    assert not [m.target for m in seen.values() if m.source.startswith("overlayd-")]
    assert [t for t in foreign if t not in seen] == [], "foreign mounts are left alone"
    assert "/usr/share/polkit-1/actions" in seen, "the private actions directory is bound"
    # Only in polkitd's namespace: the daemon's own still has everything.
    daemon_targets = {m.target for m in _mounts_of(d.daemon)}
    assert set(ours) | set(foreign) <= daemon_targets
    assert d.call("ListOverlays").returncode == 0
    stop(d)


# ------------------------------------------------------------------ kill -9


def test_kill_9_leaves_neither_dbus_daemon_nor_polkitd(
        root: Path, launched: list[Launched]) -> None:
    """polkitd must go with overlayd by its own tie, not only because the bus it serves
    goes away: dbus-daemon is frozen (SIGSTOP) first, so its connection stays open."""
    d = launch(root / "d")
    launched.append(d)
    procs = descendants(d.daemon)
    by_comm = {comm: pid for pid, (comm, _) in procs.items()}
    assert "dbus-daemon" in by_comm and "polkitd" in by_comm, procs
    polkitd = {p: v for p, v in procs.items() if v[0] != "dbus-daemon"}
    os.kill(by_comm["dbus-daemon"], signal.SIGSTOP)
    try:
        os.kill(d.daemon, signal.SIGKILL)
        _wait_until(lambda: not still_running(polkitd), "polkitd to stop after kill -9 of "
                    "overlayd", lambda: f" (left: {', '.join(still_running(polkitd))})")
    finally:
        os.kill(by_comm["dbus-daemon"], signal.SIGCONT)
    try:
        d.launcher.wait(HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {HANG} s after kill -9 of overlayd: "
                    f"{', '.join(still_running(procs))}")
    assert still_running(procs) == []


def test_the_next_start_removes_what_a_killed_daemon_left(
        root: Path, launched: list[Launched]) -> None:
    live = launch(root / "live")
    launched.append(live)
    killed = launch(root / "killed")
    launched.append(killed)
    start = descendants(killed.launcher.pid)[killed.daemon][1]
    os.kill(killed.daemon, signal.SIGKILL)
    _wait_until(lambda: not still_running({killed.daemon: ("overlayd", start)}),
                "overlayd to die")
    assert killed.bus_dir.is_dir(), "a kill -9 leaves its directory (nobody can help it)"
    new = launch(root / "new")
    launched.append(new)
    assert not killed.bus_dir.exists(), "the next start removes it"
    assert live.bus_dir.is_dir() and new.bus_dir.is_dir()
    assert live.call("ListOverlays").returncode == 0, "the live daemon's bus still works"
    for d in (live, new):
        stop(d)
    assert not live.bus_dir.exists() and not new.bus_dir.exists()
