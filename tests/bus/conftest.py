"""A real overlayd on a real private bus, for the whole session.

``overlayd --standalone`` starts its own dbus-daemon with the project's bus policy; the
tests talk to it with busctl and gdbus as separate processes, some as uid 65534.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import helpers

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
MANAGER = ["org.overlayd.Overlayd1", "/org/overlayd/Overlayd1", "org.overlayd.Overlayd1.Manager"]
OVERLAY_IFACE = "org.overlayd.Overlayd1.Overlay"
VENV_BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/bus/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


# The session daemon's polkit rules, deciding per image and per overlay name so that every
# cell of the authorization matrix can run against one polkitd:
# - nobody may create overlays of images named granted*.img, and commit or discard
#   overlays named granted-*; nothing else;
# - bin (uid 2) may do anything to overlays named shared-*, whoever made them;
# - uid 1 (daemon) gets nothing.
TEST_RULES = """
polkit.addRule(function(action, subject) {
    var overlay = action.lookup("overlay") || "";
    var image = action.lookup("image") || "";
    if (action.id.indexOf("org.overlayd.overlayd1.") != 0) return polkit.Result.NOT_HANDLED;
    if (subject.user == "nobody") {
        if (action.id == "org.overlayd.overlayd1.create" && image.match(/\\/granted[^/]*\\.img$/))
            return polkit.Result.YES;
        if ((action.id == "org.overlayd.overlayd1.commit" ||
             action.id == "org.overlayd.overlayd1.discard") && overlay.indexOf("granted-") == 0)
            return polkit.Result.YES;
    }
    if (subject.user == "bin" && overlay.indexOf("shared-") == 0) return polkit.Result.YES;
    return polkit.Result.NOT_HANDLED;
});
"""


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    address: str
    root: Path
    runtime: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *argv: str, uid: int | None = None, check: bool = False,
            **kw: object) -> subprocess.CompletedProcess[str]:
        prefix = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                         "--clear-groups"]
        return subprocess.run([*prefix, *argv], env=self.env, text=True, capture_output=True,
                              check=check, timeout=60, **kw)  # type: ignore[call-overload]

    def busctl(self, *args: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("busctl", "--system", *args, uid=uid)

    def call(self, member: str, *args: str, uid: int | None = None
             ) -> subprocess.CompletedProcess[str]:
        return self.busctl("call", *MANAGER, member, *args, uid=uid)

    def gdbus(self, path: str, method: str, *args: str, uid: int | None = None
              ) -> subprocess.CompletedProcess[str]:
        return self.run("gdbus", "call", "--system", "--dest", "org.overlayd.Overlayd1",
                        "--object-path", path, "--method", method, *args, uid=uid)

    def prop(self, path: str, name: str) -> str:
        r = self.busctl("get-property", "org.overlayd.Overlayd1", path, OVERLAY_IFACE, name)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().split(" ", 1)[1].strip('"')

    def ctl(self, *args: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(str(VENV_BIN / "overlayctl"), *args, uid=uid)

    def create(self, name: str, image: Path, *extra: str) -> str:
        n = 1 + len(extra) // 3
        r = self.call("Create", "sa{sv}", name, str(n), "image", "s", str(image), *extra)
        assert r.returncode == 0, r.stderr
        return r.stdout.split('"')[1]

    def discard_all(self) -> None:
        r = self.call("ListOverlays")
        for name in r.stdout.split('"')[1::4]:
            self.call("Discard", "sa{sv}", name, "1", "force", "b", "true")


def start_daemon(root: Path, *extra: str) -> Daemon:
    runtime = root / "run"
    log = root / "overlayd.log"  # a file, not a pipe nobody reads until the end
    with open(log, "a") as err:
        proc = subprocess.Popen([str(VENV_BIN / "overlayd"), "--standalone", "--runtime-dir",
                                 str(runtime), *extra], stdout=subprocess.PIPE, stderr=err,
                                text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("DBUS_SYSTEM_BUS_ADDRESS="):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"overlayd did not start: {line!r} {log.read_text()}")
    address = line.split("=", 1)[1]
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address, LANG="C.UTF-8")
    return Daemon(proc, address, root, runtime, env)


def stop_daemon(d: Daemon) -> str:
    """SIGTERM the daemon we started (by its PID); return what it logged."""
    d.proc.send_signal(signal.SIGTERM)
    d.proc.communicate(timeout=30)
    return (d.root / "overlayd.log").read_text()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    from tests.conftest import kernel_unavailable

    if kernel_unavailable():
        pytest.skip(kernel_unavailable() or "")
    yield from session_daemon(tmp_path_factory.mktemp("bus"))


def session_daemon(root: Path, polkit_rules: str = TEST_RULES) -> Iterator[Daemon]:
    """For a session fixture (this one, the desktop's): a daemon under ROOT with
    POLKIT_RULES, that discards what is left when it stops and has logged no traceback."""
    rules = root / "rules"
    rules.mkdir()
    (rules / "50-test.rules").write_text(polkit_rules)
    rules.chmod(0o755)
    d = start_daemon(root, "--discard-on-exit", "--polkit-rules", str(rules))
    yield d
    d.discard_all()
    err = stop_daemon(d)
    assert "Traceback" not in err, err


@pytest.fixture
def clean(daemon: Daemon) -> Iterator[Daemon]:
    """The session daemon, with no overlay left after the test."""
    yield daemon
    daemon.discard_all()


@pytest.fixture(scope="session")
def bus_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    tree = root / "tree"
    tree.mkdir()
    (tree / "hello.txt").write_text("hello\n")
    img = helpers.make_image(root / "disk.img", tree)
    helpers.traversable(root)
    img.chmod(0o644)
    return img
