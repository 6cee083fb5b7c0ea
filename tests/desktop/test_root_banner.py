"""The root banner against a daemon whose root really is an overlay.

The cheapest real one: ``unshare -m`` gives ``overlayd --standalone`` a private mount
namespace where root_namespace.sh has made "/" an overlayfs exactly as the initramfs does
(the host's root read-only as the lower, a tmpfs ``overlayd-root`` under /run/initramfs as
the upper, the state files in /run/overlayd-root), so the daemon adopts it as the overlay
"root" through the same code as on a booted machine (overlayd/host/rootfs.py), with the
default runtime directory. The GUI session runs in that namespace too (nsenter), as the
desktop user; the test reads the daemon from the host through /proc/PID/root. The VM tier
(tests/vm) boots a real initramfs, but costs minutes per boot and has no display server;
the namespace costs a second and changes nothing on the host: every mount goes with it.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers
from tests.bus.conftest import TEST_RULES, VENV_BIN, Daemon
from tests.desktop.conftest import ROOT, Gui, running_gui

HERE = Path(__file__).resolve().parent
ROOT_PATH = "/org/overlayd/Overlayd1/overlay/root"
# the desktop user may ask for (and take back) the commit of the root at shutdown
ROOT_RULES = TEST_RULES + """
polkit.addRule(function(action, subject) {
    if (subject.user == "nobody" && action.lookup("overlay") == "root" &&
        (action.id == "org.overlayd.overlayd1.commit" ||
         action.id == "org.overlayd.overlayd1.discard" ||
         action.id == "org.overlayd.overlayd1.manage-others"))
        return polkit.Result.YES;
    return polkit.Result.NOT_HANDLED;
});
"""


@pytest.fixture(scope="module")
def root_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """overlayd --standalone on a root overlay; (the daemon as the host reaches it, the
    bus address inside its namespace)."""
    root = tmp_path_factory.mktemp("root-overlay")
    rules = root / "rules"
    rules.mkdir()
    (rules / "50-test.rules").write_text(ROOT_RULES)
    rules.chmod(0o755)
    log = root / "overlayd.log"
    # from the host: the tests' files, /tmp (X's socket), the checkout and the venv
    dirs = " ".join(sorted({str(tmp_path_factory.getbasetemp()), "/tmp", str(ROOT),
                            str(VENV_BIN.parent)}))
    with open(log, "a") as err:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", str(HERE / "root_namespace.sh"),
             str(root / "newroot"), dirs, str(VENV_BIN / "overlayd"), "--standalone",
             "--polkit-rules", str(rules)], stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("DBUS_SYSTEM_BUS_ADDRESS=unix:path="):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"overlayd did not start: {line!r} {log.read_text()}")
    inside = line.split("=", 1)[1]
    # the same socket from the host: through the daemon's root (root may look there)
    outside = f"unix:path=/proc/{proc.pid}/root{inside.split('=', 1)[1]}"
    env = {"DBUS_SYSTEM_BUS_ADDRESS": outside, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8"}
    d = Daemon(proc, outside, root, Path("/run/overlayd"), env)
    try:
        yield d, inside
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def root_gui(root_daemon: tuple[Daemon, str], tmp_path_factory: pytest.TempPathFactory,
             shots: Path) -> Iterator[Gui]:
    daemon, inside = root_daemon
    nsenter = ["nsenter", f"--mount=/proc/{daemon.proc.pid}/ns/mnt", "--"]
    with running_gui(tmp_path_factory.mktemp("gui-root"), shots, daemon, inside=nsenter,
                     app_bus=inside) as g:
        yield g


def at_shutdown(daemon: Daemon) -> str:
    r = daemon.busctl("get-property", "org.overlayd.Overlayd1", ROOT_PATH,
                      "org.overlayd.Overlayd1.Overlay", "CommitAtShutdown")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def switch(gui: Gui, *command: str) -> str:
    r = gui.retried(*command, "Commit at shutdown")
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip().splitlines()[-1]


def test_the_daemon_really_runs_on_a_root_overlay(root_daemon: tuple[Daemon, str]) -> None:
    daemon, _ = root_daemon
    mounts = Path(f"/proc/{daemon.proc.pid}/mountinfo").read_text().splitlines()
    root = [m for m in mounts if m.split()[4] == "/"]
    assert root and " - overlay overlayd-root " in root[-1], root
    r = daemon.busctl("get-property", "org.overlayd.Overlayd1", "/org/overlayd/Overlayd1",
                      "org.overlayd.Overlayd1.Manager", "RootOverlay")
    assert r.stdout.strip() == f'o "{ROOT_PATH}"', r.stdout + r.stderr


def test_the_banner_says_so_and_its_switch_asks_the_daemon(root_gui: Gui) -> None:
    gui, daemon = root_gui, root_gui.daemon
    gui.wait_line(f"ROOT {ROOT_PATH} no-commit")
    tree = gui.tree()
    assert any(label.startswith("This system runs on an overlay") for _, label in tree), tree
    assert ("list item", "root") in tree
    assert switch(gui, "state") == "unchecked"
    assert at_shutdown(daemon) == "b false"

    mark = gui.mark()
    switch(gui, "toggle")  # the desktop user, through polkit: Commit with at_shutdown
    gui.wait_line("OK Could not ask for a commit at shutdown of root", after=mark)
    gui.wait_line(f"ROOT {ROOT_PATH} commit-at-shutdown", after=mark)
    assert at_shutdown(daemon) == "b true"
    assert Path(f"/proc/{daemon.proc.pid}/root/run/overlayd-root/commit").exists()
    helpers.wait_for(lambda: switch(gui, "state") == "checked", 30, "the switch to be on")
    gui.screenshot("root-banner-commit-at-shutdown")

    mark = gui.mark()
    switch(gui, "toggle")  # Discard with at_shutdown: taken back, nothing unmounted
    gui.wait_line("OK Could not cancel the commit at shutdown of root", after=mark)
    gui.wait_line(f"ROOT {ROOT_PATH} no-commit", after=mark)
    assert at_shutdown(daemon) == "b false"
    assert not Path(f"/proc/{daemon.proc.pid}/root/run/overlayd-root/commit").exists()
    assert switch(gui, "state") == "unchecked"


def test_the_switch_follows_a_request_made_elsewhere(root_gui: Gui) -> None:
    gui, daemon = root_gui, root_gui.daemon
    mark = gui.mark()
    r = daemon.ctl("commit", "root")  # overlayctl: the root's commit is at shutdown
    assert r.returncode == 0, r.stderr
    gui.wait_line(f"ROOT {ROOT_PATH} commit-at-shutdown", after=mark)
    helpers.wait_for(lambda: switch(gui, "state") == "checked", 30, "the switch to be on")
    mark = gui.mark()
    r = daemon.busctl("call", "org.overlayd.Overlayd1", ROOT_PATH,
                      "org.overlayd.Overlayd1.Overlay", "Discard", "a{sv}", "1",
                      "at_shutdown", "b", "true")
    assert r.returncode == 0, r.stderr
    gui.wait_line(f"ROOT {ROOT_PATH} no-commit", after=mark)
    helpers.wait_for(lambda: switch(gui, "state") == "unchecked", 30, "the switch to be off")


def test_a_daemon_without_a_root_overlay_shows_no_banner(gui: Gui) -> None:
    assert gui.wait_line("ROOT") == "ROOT /"
    assert not any(label.startswith("This system runs on an overlay") for _, label in
                   gui.tree())
