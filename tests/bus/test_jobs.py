"""Commits as jobs over a real bus: the Job object, StartCommit, Cancel, polkit for it,
overlayctl's commit/jobs/cancel, and the UpperUsage levels. Calls by busctl, gdbus and
overlayctl as separate processes; signals watched with ``gdbus monitor``.

A commit is stopped at a known point with an OpenGate (tests/gate.py) on one file of the
upper: overlayd opens each file to copy it, so the files sorted before the gated one are
in the image and the rest are not, whatever the speed of the machine.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers
from tests.bus.conftest import MANAGER, OVERLAY_IFACE, VENV_BIN, Daemon
from tests.bus.test_api import DBUS_DIR, interface_shape
from tests.gate import OpenGate

JOB_IFACE = "org.overlayd.Overlayd1.Job"
BUS = "org.overlayd.Overlayd1"
README = Path(__file__).resolve().parents[2] / "README.md"
NOBODY = 65534
MIB = 1 << 20


class Monitor:
    """``gdbus monitor`` of everything the daemon sends, as a separate process; its lines
    are read by a thread, so that a wait for one can time out."""

    def __init__(self, d: Daemon, argv: tuple[str, ...] = ("gdbus", "monitor", "--system",
                                                           "--dest", BUS),
                 header_lines: int = 2) -> None:
        """ARGV: what watches (by default every signal the daemon sends), printing
        HEADER_LINES before it does ("Monitoring ...", "The name ... is owned by ...")."""
        self.proc = subprocess.Popen(list(argv), env=d.env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        for _ in range(header_lines):
            self.proc.stdout.readline()
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)

    def until(self, pattern: str, timeout: float = 120) -> str:
        """Read lines until one matches PATTERN."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no signal matching {pattern!r}:\n"
                                     + "".join(self.lines[-20:])) from None
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def stop(self) -> list[str]:
        self.proc.terminate()  # the monitor we started
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return self.lines


@pytest.fixture
def monitor(daemon: Daemon) -> Iterator[Monitor]:
    m = Monitor(daemon)
    yield m
    if m.proc.poll() is None:
        m.stop()


def write(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(block)


def fill(d: Daemon, name: str, files: dict[str, int]) -> Path:
    """Write FILES (name -> bytes) into overlay NAME; the upper path of the gate's file."""
    mp = Path(d.prop(d.call("GetOverlay", "s", name).stdout.split('"')[1], "MountPoint"))
    for f, size in files.items():
        write(mp / f, size)
    return d.runtime / name / "rw" / "upper"


def job_prop(d: Daemon, job: str, *names: str, uid: int | None = None) -> list[str]:
    r = d.busctl("get-property", BUS, job, JOB_IFACE, *names, uid=uid)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def start_commit(d: Daemon, name: str, uid: int | None = None) -> str:
    r = d.call("StartCommit", "sa{sv}", name, "0", uid=uid)
    assert r.returncode == 0, r.stderr
    return r.stdout.split('"')[1]


def image_has(image: Path, path: str) -> bool:
    r = subprocess.run(["debugfs", "-R", f"stat {path}", str(image)], capture_output=True,
                       text=True)
    return "File not found" not in r.stderr


def fsck_clean(image: Path) -> bool:
    return subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True).returncode == 0


def image_tree(image: Path, root: Path) -> dict[str, object]:
    check = root / "check"
    check.mkdir(exist_ok=True)
    helpers.sh("mount", "-o", "ro,loop", image, check)
    try:
        return helpers.snapshot(check)
    finally:
        helpers.sh("umount", check)


# -- a job of 1 GiB, from StartCommit to Completed ------------------------------------------

BIG = {**{f"a{i}": 64 * MIB for i in range(8)}, "m": 64 * MIB,
       **{f"z{i}": 64 * MIB for i in range(8)}}  # 1088 MiB; the gate is on m


def test_a_commit_of_1_gib_as_a_job(clean: Daemon, root: Path, monitor: Monitor) -> None:
    img = helpers.make_image(root / "big.img", size="2G")
    path = clean.create("big", img, "size", "t", str(1280 * MIB))
    upper = fill(clean, "big", BIG)
    try:
        with OpenGate(upper / "m") as gate:
            job = start_commit(clean, "big")  # answers while the commit is held below
            assert re.fullmatch(r"/org/overlayd/Overlayd1/job/\d+", job)
            gate.wait()
            assert job_prop(clean, job, "Operation", "Objects", "StartedByUID", "Cancelable",
                            uid=NOBODY) == ['s "commit"', f'ao 1 "{path}"', "u 0", "b true"]
            assert clean.prop(path, "State") == "committing"
            monitor.until(rf"{job}: .*PropertiesChanged.*'Progress'")
            time.sleep(1)  # a span of samples for the rate (no time is asserted)
        monitor.until(rf"{job}: .*Completed \(true")
        monitor.until(rf"InterfacesRemoved \(objectpath '{job}'")
        lines = monitor.stop()
    finally:
        (root / "big.img").unlink()
    mine = [ln for ln in lines if ln.startswith(f"{job}:")]
    added = next(ln for ln in lines if f"InterfacesAdded (objectpath '{job}'" in ln)
    assert f"'Objects': <[objectpath '{path}']>" in added and "'StartedByUID': <uint32 0>" in added
    progress = [float(p) for ln in mine for p in re.findall(r"'Progress': <([0-9.e-]+)>", ln)]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 3
    assert any(0 < p < 1 for p in progress)
    rates = [int(r) for ln in mine for r in re.findall(r"'Rate': <uint64 (\d+)>", ln)]
    ends = [int(e) for ln in mine for e in re.findall(r"'ExpectedEndTime': <uint64 (\d+)>", ln)]
    assert any(r > 0 for r in rates) and any(e > 0 for e in ends)
    changed = [ln for ln in mine if "PropertiesChanged" in ln]
    assert len(changed) < 40, "a few a second, never per file"
    assert any("Completed (true" in ln for ln in mine)
    assert clean.busctl("get-property", BUS, job, JOB_IFACE, "Operation").returncode != 0
    assert clean.prop(path, "State") == "active"


def readme_script() -> str:
    """The README's busctl script that starts a commit and waits for its end."""
    text = README.read_text()
    m = re.search(r"```sh\n(#!/bin/sh\n# overlayd-commit-wait.*?)```", text, re.S)
    assert m, "the README shows the script"
    return m.group(1)


def test_start_commit_then_wait_with_default_timeouts(clean: Daemon, root: Path) -> None:
    """The README's script, as it is: StartCommit returns at once (the commit is held
    meanwhile), the script waits with busctl's default timeouts and says how it ended."""
    img = helpers.make_image(root / "wait.img")
    clean.create("wait", img)
    upper = fill(clean, "wait", {"a": MIB, "m": MIB, "z": MIB})
    script = root / "commit-wait.sh"
    script.write_text(readme_script())
    script.chmod(0o755)
    with OpenGate(upper / "m") as gate:
        proc = subprocess.Popen([str(script), "wait"], env=clean.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        gate.wait()
        assert proc.poll() is None, "the script waits while the job runs"
        jobs = json.loads(clean.ctl("jobs", "--json").stdout)
        assert [j["Overlays"] for j in jobs] == [["wait"]]
        live = clean.run("gdbus", "introspect", "--system", "--dest", BUS, "--object-path",
                         jobs[0]["ObjectPath"], "--xml", check=True).stdout
        written = (DBUS_DIR / f"{JOB_IFACE}.xml").read_text()
        assert interface_shape(live, JOB_IFACE) == interface_shape(written, JOB_IFACE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "committed" in out
    assert image_has(img, "/z")


# -- cancelling ---------------------------------------------------------------------------

def test_cancel_half_way(clean: Daemon, root: Path) -> None:
    img = helpers.make_image(root / "cancel.img", size="256M")
    path = clean.create("cancel", img, "size", "t", str(128 * MIB))
    mp = Path(clean.prop(path, "MountPoint"))
    upper = fill(clean, "cancel", {"a1": 8 * MIB, "a2": 8 * MIB, "m": 8 * MIB,
                                   "z1": 8 * MIB, "z2": 8 * MIB})
    (mp / "dir").mkdir()
    (mp / "dir" / "zz.txt").write_text("late\n")
    before = helpers.snapshot(mp)
    with OpenGate(upper / "m") as gate:
        caller = subprocess.Popen(  # the blocking Commit, without a client timeout
            ["gdbus", "call", "--system", "--dest", BUS, "--object-path", path,
             "--timeout", "600", "--method", f"{OVERLAY_IFACE}.Commit", "{}"],
            env=clean.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        gate.wait()
        job = json.loads(clean.ctl("jobs", "--json").stdout)[0]["ObjectPath"]
        r = clean.busctl("call", BUS, job, JOB_IFACE, "Cancel", "a{sv}", "0")
        assert r.returncode == 0, r.stderr
        r = clean.busctl("call", BUS, job, JOB_IFACE, "Cancel", "a{sv}", "0")
        assert r.returncode == 0, "cancelling twice is fine"
    _out, err = caller.communicate(timeout=120)
    assert caller.returncode != 0
    assert "org.overlayd.Overlayd1.Error.Cancelled" in err and "Nothing was lost" in err, err
    # Every write still visible, the image clean and holding a part.
    assert helpers.diff_snapshots(before, helpers.snapshot(mp)) == []
    assert clean.prop(path, "State") == "active"
    assert clean.prop(path, "HalfCommitted") == "true"
    assert "cancelled" in clean.prop(path, "LastError")
    assert fsck_clean(img)
    assert image_has(img, "/a1") and image_has(img, "/m") and not image_has(img, "/z1")
    # Committing again finishes the job: the image is then the merged view.
    r = clean.call("Commit", "sa{sv}", "cancel", "0")
    assert r.returncode == 0, r.stderr
    assert clean.prop(path, "HalfCommitted") == "false"
    assert clean.call("Discard", "sa{sv}", "cancel", "0").returncode == 0
    assert fsck_clean(img)
    problems = helpers.diff_snapshots(before, image_tree(img, root))
    assert problems == [], "\n".join(problems)


@pytest.fixture(scope="module")
def granted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image the session's polkit rules let nobody use (conftest.TEST_RULES)."""
    root = tmp_path_factory.mktemp("job-images")
    img = helpers.make_image(root / "granted-jobs.img")
    img.chmod(0o666)
    helpers.traversable(root)
    return img


def test_nobody_cannot_cancel_roots_job_but_its_own(clean: Daemon, root: Path,
                                                     granted: Path) -> None:
    img = helpers.make_image(root / "roots.img")
    clean.create("roots", img)
    upper = fill(clean, "roots", {"a": MIB, "m": MIB})
    with OpenGate(upper / "m") as gate:
        job = start_commit(clean, "roots")
        gate.wait()
        r = clean.busctl("--allow-interactive-authorization=no", "call", BUS, job, JOB_IFACE,
                         "Cancel", "a{sv}", "0", uid=NOBODY)
        assert r.returncode != 0 and "cancel-job-other-user" in r.stderr, r.stderr
        r = clean.ctl("--no-ask-password", "cancel", "roots", uid=NOBODY)
        assert r.returncode == 77, r.stderr
        assert job_prop(clean, job, "Cancelable") == ["b true"]
    # nobody's own job: cancel-job is granted to the uid that started it.
    r = clean.run("gdbus", "call", "--system", "--dest", BUS, "--object-path", MANAGER[1],
                  "--method", f"{MANAGER[2]}.Create", "granted-own",
                  f"{{'image': <'{granted}'>}}", uid=NOBODY)
    assert r.returncode == 0, r.stderr
    upper = fill(clean, "granted-own", {"a": MIB, "m": MIB, "z": MIB})
    with OpenGate(upper / "m") as gate:
        committer = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             str(VENV_BIN / "overlayctl"), "--no-ask-password", "commit", "granted-own"],
            env=clean.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        gate.wait()
        jobs = json.loads(clean.ctl("jobs", "--json", uid=NOBODY).stdout)
        assert [(j["Overlays"], j["StartedByUID"]) for j in jobs] == [(["granted-own"], NOBODY)]
        canceller = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             str(VENV_BIN / "overlayctl"), "--no-ask-password", "cancel", "granted-own"],
            env=clean.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_for(lambda: "cancelled by uid 65534" in _log(clean), "the cancel to be asked")
    out, err = committer.communicate(timeout=120)
    assert committer.returncode == 79 and "was cancelled" in err, (out, err)
    out, err = canceller.communicate(timeout=120)
    assert canceller.returncode == 0 and "Cancelled job" in out, (out, err)


def _log(d: Daemon) -> str:
    return (d.root / "overlayd.log").read_text()


def _wait_for(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (IndexError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"waited in vain for {what}")


# -- overlayctl ---------------------------------------------------------------------------

def test_overlayctl_commit_without_a_terminal(clean: Daemon, root: Path) -> None:
    clean.create("plain", helpers.make_image(root / "plain.img"))
    fill(clean, "plain", {"a": 2 * MIB})
    r = clean.ctl("commit", "plain")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and r.stderr == ""
    assert re.fullmatch(r"Committing overlay 'plain' \(.* in RAM\) as job \d+\.\.\.", lines[0])
    assert lines[1].startswith("Committed overlay 'plain': 1 entries")


def test_overlayctl_commit_on_a_terminal_draws_a_bar(clean: Daemon, root: Path) -> None:
    clean.create("tty", helpers.make_image(root / "tty.img"))
    fill(clean, "tty", {"a": 4 * MIB})
    r = clean.run("script", "-qfec", f"{VENV_BIN / 'overlayctl'} commit tty", "/dev/null")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"Committing 'tty' \(job \d+\)", r.stdout), r.stdout
    assert "Committed overlay 'tty'" in r.stdout


def test_ctrl_c_leaves_the_commit_running(clean: Daemon, root: Path) -> None:
    img = helpers.make_image(root / "intr.img")
    clean.create("intr", img)
    upper = fill(clean, "intr", {"a": MIB, "m": MIB})
    with OpenGate(upper / "m") as gate:
        ctl = subprocess.Popen([str(VENV_BIN / "overlayctl"), "commit", "intr"], env=clean.env,
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        gate.wait()
        assert ctl.stdout is not None
        started = ctl.stdout.readline()  # printed once overlayctl has seen its job
        job = json.loads(clean.ctl("jobs", "--json").stdout)[0]["Id"]
        assert started.endswith(f"as job {job}...\n"), started
        ctl.send_signal(signal.SIGINT)  # the overlayctl we started
        out, err = ctl.communicate(timeout=60)
        assert ctl.returncode == 130, (out, err)
        assert f"goes on in overlayd as job {job}" in err
        assert f"overlayctl cancel {job}" in err
        assert clean.prop(clean.call("GetOverlay", "s", "intr").stdout.split('"')[1],
                          "State") == "committing"
    _wait_for(lambda: json.loads(clean.ctl("jobs", "--json").stdout) == [], "the job's end")
    assert image_has(img, "/m")


# -- UpperUsage ---------------------------------------------------------------------------

def test_filling_an_overlay_crosses_each_usage_state_once(clean: Daemon, bus_image: Path,
                                                          monitor: Monitor) -> None:
    path = clean.create("fill", bus_image, "size", "t", str(16 * MIB))
    mp = Path(clean.prop(path, "MountPoint"))
    assert clean.prop(path, "UpperUsage") == "ok"
    written = 0
    for percent, level in ((85, "high"), (96, "critical"), (101, "full")):
        want = 16 * MIB * percent // 100
        r = subprocess.run(["dd", "if=/dev/zero", f"of={mp}/data", "bs=64K", "conv=notrunc",
                            f"seek={written // 65536}", f"count={(want - written) // 65536}",
                            "status=none"], capture_output=True, text=True)
        assert (r.returncode != 0) == (level == "full"), r.stderr
        written = want
        monitor.until(rf"{path}: .*'UpperUsage': <'{level}'>")
    lines = monitor.stop()
    mine = [re.findall(r"'UpperUsage': <'(\w+)'>", ln) for ln in lines if ln.startswith(path)]
    assert [u for found in mine for u in found] == ["high", "critical", "full"]
    logged = [ln for ln in _log(clean).splitlines() if "RAM of overlay 'fill'" in ln]
    assert len(logged) == 3 and "running low" in logged[0] and "almost full" in logged[1] \
        and "is full" in logged[2], logged
    r = clean.ctl("status", "fill")
    assert "Usage: full" in r.stdout
    assert clean.call("Commit", "sa{sv}", "fill", "0").returncode == 0
    assert clean.prop(path, "UpperUsage") == "ok", "a commit empties the RAM: ok at once"

