"""State follows the mount table (issue 11), through the bus: an overlay unmounted from
outside is "unmounted" with PropertiesChanged and a journal line; Discard cleans up."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from overlayd.host.mounttable import mount_at
from tests.bus.conftest import Daemon


def wait(cond, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """A generous bound that only detects a hang."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_umount_from_outside_is_seen_and_signalled(clean: Daemon, bus_image: Path) -> None:
    path = clean.create("watched", bus_image)
    mountpoint = clean.prop(path, "MountPoint")
    monitor = subprocess.Popen(["gdbus", "monitor", "--system", "--dest",
                                "org.overlayd.Overlayd1", "--object-path", path],
                               env=clean.env, stdout=subprocess.PIPE, text=True)
    try:
        assert monitor.stdout is not None
        monitor.stdout.readline()  # "Monitoring signals on object ...": it is listening
        subprocess.run(["umount", mountpoint], check=True)  # someone else's umount
        wait(lambda: clean.prop(path, "State") == "unmounted", "State unmounted")
        assert "outside overlayd" in clean.prop(path, "LastError")
        wait(lambda: "was unmounted from" in (clean.root / "overlayd.log").read_text(),
             "the journal line")
    finally:
        monitor.terminate()
        out = monitor.communicate(timeout=30)[0]
    assert "PropertiesChanged" in out and "'unmounted'" in out, out
    r = clean.ctl("status", "watched")
    assert "unmounted" in r.stdout and "active" not in r.stdout.split("\n")[0], r.stdout
    r = clean.call("Discard", "sa{sv}", "watched", "0")
    assert r.returncode == 0, r.stderr
    assert mount_at(mountpoint) is None
