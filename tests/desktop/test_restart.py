"""The daemon stops and starts again under a running app: the list empties and refills.

``--standalone`` takes its bus down with it, so here the bus is a plain dbus-daemon of the
test's own (a permissive policy, no polkitd: only root may change anything, which is all the
test needs) and overlayd serves on it with --bus-address, as on a real system bus where
overlayd restarts and the bus stays.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers
from tests.bus.conftest import VENV_BIN, Daemon
from tests.desktop.conftest import new_image, running_gui

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type><auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default"><allow user="*"/><allow own="*"/>
    <allow send_destination="*"/><allow receive_sender="*"/></policy>
</busconfig>
"""


def start_overlayd(root: Path, address: str, env: dict[str, str]) -> subprocess.Popen[str]:
    with open(root / "overlayd.log", "a") as err:
        proc = subprocess.Popen([str(VENV_BIN / "overlayd"), "--bus-address", address,
                                 "--runtime-dir", str(root / "run")], stderr=err, text=True)
    helpers.wait_for(lambda: subprocess.run(
        ["busctl", "--address", address, "status", "org.overlayd.Overlayd1"],
        capture_output=True, env=env).returncode == 0, 60, "overlayd to own its name")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.fixture
def own_bus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    helpers.traversable(tmp_path)
    sock = tmp_path / "bus.sock"
    (tmp_path / "bus.conf").write_text(BUS_CONF.format(socket=sock))
    bus = subprocess.Popen(["dbus-daemon", f"--config-file={tmp_path / 'bus.conf'}", "--nofork",
                            "--nopidfile"], stderr=subprocess.DEVNULL)
    try:
        helpers.wait_for(sock.exists, 30, "the bus socket")
        yield f"unix:path={sock}", tmp_path
    finally:
        bus.terminate()
        bus.wait(timeout=30)


def test_a_daemon_restart_empties_and_refills_the_list(
        own_bus: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory,
        shots: Path, images: Path) -> None:
    address, root = own_bus
    env = {"DBUS_SYSTEM_BUS_ADDRESS": address, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8"}
    proc = start_overlayd(root, address, env)
    daemon = Daemon(proc, address, root, root / "run", env)  # type: ignore[arg-type]
    try:
        img = new_image(images, "restart")
        with running_gui(tmp_path_factory.mktemp("gui-restart"), shots, daemon) as gui:
            mark = gui.mark()
            daemon.create("kept", img)
            gui.wait_line("OBJECTS 1 kept", after=mark)
            stop(proc)  # the overlay stays mounted; the next overlayd adopts it
            gui.wait_line("OWNER -", after=mark)
            gui.wait_line("OBJECTS 0", after=mark)
            assert any(label == "overlayd is not running" for _, label in gui.tree())
            gui.screenshot("daemon-stopped")
            mark = gui.mark()
            proc = daemon.proc = start_overlayd(root, address, env)
            gui.wait_line("OBJECTS 1 kept", after=mark)
            assert ("list item", "kept") in gui.tree()
            gui.screenshot("daemon-restarted")
    finally:
        if proc.poll() is None:
            daemon.discard_all()
            stop(proc)
        else:  # it died: clean up with a daemon of our own
            proc = start_overlayd(root, address, env)
            daemon.discard_all()
            stop(proc)


def test_an_app_started_before_the_daemon_fills_when_it_comes(
        own_bus: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory,
        shots: Path, images: Path) -> None:
    address, root = own_bus
    env = {"DBUS_SYSTEM_BUS_ADDRESS": address, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8"}
    proc: subprocess.Popen[str] | None = None
    daemon = Daemon(None, address, root, root / "run", env)  # type: ignore[arg-type]
    try:
        with running_gui(tmp_path_factory.mktemp("gui-before"), shots, daemon) as gui:
            assert gui.wait_line("OWNER") == "OWNER -"
            assert any(label == "overlayd is not running" for _, label in gui.tree())
            mark = gui.mark()
            proc = daemon.proc = start_overlayd(root, address, env)
            daemon.create("later", new_image(images, "later"))
            gui.wait_line("OBJECTS 1 later", after=mark)
            assert ("list item", "later") in gui.tree()
            assert not any(label == "overlayd is not running" for _, label in gui.tree())
    finally:
        if proc is not None:
            daemon.discard_all()
            stop(proc)
