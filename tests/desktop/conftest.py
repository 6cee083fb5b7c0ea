"""The Overlays app against a real ``overlayd --standalone``, on a real display server.

One daemon (its own private system bus and polkitd, with the bus tests' polkit rules) and one
GUI session for the whole directory: ``xvfb-run`` around ``dbus-run-session`` around the app,
all as uid 65534 (nobody), a desktop user whom polkit lets create overlays of images named
granted*.img and commit or discard overlays named granted-*, and nothing else (uid 0 is always
allowed, so a root app could never show a refusal). The app runs with Debian's
/usr/bin/python3 from a copy of overlayd/__init__.py and overlayd/desktop/ only: what it
needs of the project is that and nothing else. The tests read it through AT-SPI
(atspi_driver.py, also as nobody, on the app's session bus) and from its event lines on
stdout; each saves a screenshot (``import -window root``) as an artifact under the session's
temporary directory, or OVERLAYD_DESKTOP_SHOTS when set.

Without Xvfb, the AT-SPI bindings or GTK they skip, unless OVERLAYD_REQUIRE_DESKTOP=1 (set by
.ci/run), which makes them fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import helpers
from tests.bus.conftest import TEST_RULES, VENV_BIN, Daemon, session_daemon

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SYSTEM_PY = "/usr/bin/python3"
NOBODY = 65534
GI_MODULES = ("Gtk', '4.0", "Adw', '1", "Atspi', '2.0")
# the bus tests' rules, and: the desktop user commits overlays named auth-* after typing
# their own password (auth_self), to a polkit agent (polkit_agent.py)
DESKTOP_RULES = TEST_RULES + """
polkit.addRule(function(action, subject) {
    var overlay = action.lookup("overlay") || "";
    if (subject.user == "nobody" && action.id == "org.overlayd.overlayd1.commit" &&
        overlay.indexOf("auth-") == 0)
        return polkit.Result.AUTH_SELF;
    return polkit.Result.NOT_HANDLED;
});
"""


def desktop_unavailable() -> str | None:
    for tool in ("xvfb-run", "Xvfb", "dbus-run-session", "import"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists(SYSTEM_PY):
        return f"{SYSTEM_PY} is missing"
    probe = ("import gi; gi.require_version('Gtk', '4.0'); gi.require_version('Adw', '1'); "
             "gi.require_version('Atspi', '2.0')")
    r = subprocess.run([SYSTEM_PY, "-c", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return "PyGObject with GTK 4, libadwaita and AT-SPI is not installed: " + \
            r.stderr.strip().splitlines()[-1:][0] if r.stderr.strip() else "no gi"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = [i for i in items if "tests/desktop/" in str(i.fspath)]
    for item in wanted:
        item.add_marker(pytest.mark.kernel)
    if not wanted:
        return
    reason = desktop_unavailable()
    if reason is None:
        return
    if os.environ.get("OVERLAYD_REQUIRE_DESKTOP") == "1":
        pytest.exit(f"{len(wanted)} desktop tests cannot run here ({reason}), and "
                    "OVERLAYD_REQUIRE_DESKTOP=1 forbids skipping them.", returncode=3)
    for item in wanted:
        item.add_marker(pytest.mark.skip(reason=f"desktop test: {reason}"))


@dataclass
class Gui:
    proc: subprocess.Popen[bytes]
    home: Path
    log: Path
    shots: Path
    session_bus: str
    display: str
    app_pid: int
    daemon: Daemon

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def wait_line(self, prefix: str, *, after: int = 0, timeout: float = 60) -> str:
        """The first event line from the app starting with PREFIX (after line AFTER)."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [ln for ln in self.lines()[after:] if ln.startswith(prefix)]
            return bool(found)
        helpers.wait_for(seen, timeout, f"the app to log {prefix!r}:\n" +
                         "\n".join(self.lines()[-15:]))
        return found[0]

    def notifications(self) -> list[str]:
        """What the session's notification server was asked to show."""
        path = self.home / "notify.log"
        return [ln for ln in path.read_text().splitlines() if ln.startswith("NOTIFY ")] \
            if path.exists() else []

    def opened(self) -> list[str]:
        """The URIs the session's file manager was asked to show (file_manager)."""
        path = self.home / "opened.log"
        return path.read_text().splitlines() if path.exists() else []

    def mark(self) -> int:
        return len(self.lines())

    def atspi(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"DBUS_SESSION_BUS_ADDRESS": self.session_bus, "HOME": str(self.home),
               "PATH": os.environ["PATH"], "XDG_RUNTIME_DIR": str(self.home / "run")}
        return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                               "--clear-groups", SYSTEM_PY, str(self.home / "atspi_driver.py"),
                               *args], env=env, text=True, capture_output=True, timeout=60)

    def read(self, command: str) -> subprocess.CompletedProcess[str]:
        """A dump, again in a fresh process when a window came or went during the walk
        (libatspi then calls the app gone for the rest of that process)."""
        return self.retried(command)

    def retried(self, *args: str) -> subprocess.CompletedProcess[str]:
        for _ in range(10):
            r = self.atspi(*args)
            if r.returncode == 0 or "AT-SPI kept failing" not in r.stdout:
                break  # done, or a real answer (no such button): not worth another walk
        return r

    def tree(self) -> list[tuple[str, str]]:
        r = self.read("dump")
        assert r.returncode == 0, r.stdout + r.stderr
        return [(p[1], p[2]) for p in (ln.split("\t", 2) for ln in r.stdout.splitlines())
                if len(p) == 3]

    def tree_all(self) -> list[tuple[str, str]]:
        """Every window's nodes, dialogs too."""
        r = self.read("dump-all")
        assert r.returncode == 0, r.stdout + r.stderr
        return [(p[1], p[2]) for p in (ln.split("\t", 2) for ln in r.stdout.splitlines())
                if len(p) == 3]

    def click(self, row: str, button: str) -> None:
        r = self.retried("click", row, button)
        assert r.returncode == 0, r.stdout + r.stderr + "\n".join(self.lines()[-10:])

    def click_dialog(self, button: str) -> None:
        r = self.retried("click-dialog", button)
        assert r.returncode == 0, r.stdout + r.stderr

    def activate(self, action: str, *args: str) -> None:
        """A GAction of the app, over its session bus (what scripts can do)."""
        tup = "(" + ", ".join(f"'{a}'" for a in args) + ("," if len(args) == 1 else "") + ")"
        env = {"DBUS_SESSION_BUS_ADDRESS": self.session_bus, "PATH": os.environ["PATH"]}
        r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups", "gdbus", "call", "--session", "--dest",
                            "org.overlayd.Overlays", "--object-path", "/org/overlayd/Overlays",
                            "--method", "org.gtk.Actions.Activate", action,
                            f"[<{tup}>]" if args else "[]", "{}"],
                           env=env, text=True, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr

    def screenshot(self, name: str) -> Path:
        time.sleep(0.3)  # let the last frame land: a picture, not a check
        out = self.shots / f"{name}.png"
        subprocess.run(["import", "-display", self.display, "-window", "root", str(out)],
                       check=True, capture_output=True, timeout=60)
        return out


@pytest.fixture(scope="session")
def desktop_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("desktop")
    helpers.traversable(root)  # the mount points, for the desktop user's file manager
    yield from session_daemon(root, DESKTOP_RULES)


def app_copy(dest: Path) -> Path:
    """overlayd/__init__.py and overlayd/desktop/: all the app may use of the project."""
    pkg = dest / "overlayd"
    (pkg / "desktop").mkdir(parents=True)
    shutil.copy(ROOT / "overlayd" / "__init__.py", pkg)
    for f in (ROOT / "overlayd" / "desktop").glob("*.py"):
        shutil.copy(f, pkg / "desktop")
    return dest


def file_manager(home: Path) -> None:
    """The session's file manager, found as the desktop finds one: a .desktop file in
    $HOME/.local/share/applications, the default handler of inode/directory in
    $HOME/.config/mimeapps.list (XDG_DATA_HOME and XDG_CONFIG_HOME unset: their defaults).
    It appends the URI it is given to $HOME/opened.log."""
    record = home / "record-open.sh"
    record.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {home / "opened.log"}\n')
    record.chmod(0o755)
    apps = home / ".local" / "share" / "applications"
    apps.mkdir(parents=True)
    (apps / "overlayd-test-files.desktop").write_text(
        "[Desktop Entry]\nType=Application\nName=Test Files\n"
        f"Exec={record} %u\nMimeType=inode/directory;\nNoDisplay=true\n")
    (home / ".config").mkdir()
    (home / ".config" / "mimeapps.list").write_text(
        "[Default Applications]\ninode/directory=overlayd-test-files.desktop\n")


@contextmanager
def running_gui(home: Path, shots: Path, daemon: Daemon, *, inside: Sequence[str] = (),
                app_bus: str | None = None) -> Iterator[Gui]:
    """xvfb-run, dbus-run-session and the app as nobody, on DAEMON's bus, until the end.
    INSIDE: a command prefix that runs the session elsewhere (nsenter into the daemon's mount
    namespace), where DAEMON's bus is APP_BUS."""
    app_copy(home / "app")
    shutil.copy(HERE / "atspi_driver.py", home)
    shutil.copy(HERE / "notification_server.py", home)
    file_manager(home)
    (home / "run").mkdir(mode=0o700)
    helpers.traversable(home)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(home)], check=True)
    log, info = home / "app.log", home / "info"
    # the desktop's notification server, then the app; both end with the session bus
    inner = (f"{SYSTEM_PY} {home / 'notification_server.py'} > {home / 'notify.log'} 2>&1 & "
             f'echo "$DBUS_SESSION_BUS_ADDRESS $DISPLAY $$" > {info}; '
             f"exec {SYSTEM_PY} -m overlayd.desktop")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_RUNTIME_DIR": str(home / "run"),
           "PYTHONPATH": str(home / "app"), "DBUS_SYSTEM_BUS_ADDRESS": app_bus or daemon.address,
           "GDK_BACKEND": "x11", "GSK_RENDERER": "cairo", "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1"}
    with open(log, "wb") as out:
        # launch.py: a subreaper that exits only once everything the session started is gone
        proc = subprocess.Popen(
            [str(VENV_BIN / "python"), str(ROOT / "tests" / "bus" / "launch.py"), "--",
             *inside, "xvfb-run", "-a", "-s", "-screen 0 1240x640x24 -nolisten tcp -ac",
             "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "dbus-run-session", "--", "sh", "-c", inner],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home)
    try:
        helpers.wait_for(lambda: info.exists() and len(info.read_text().split()) == 3, 60,
                         "the GUI session to start")
        bus, display, pid = info.read_text().split()
        g = Gui(proc, home, log, shots, bus, display, int(pid), daemon)
        g.wait_line("OBJECTS")
        yield g
    finally:
        if info.exists() and len(info.read_text().split()) == 3:
            os.kill(int(info.read_text().split()[2]), signal.SIGTERM)  # the app, ours
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(os.environ.get("OVERLAYD_DESKTOP_SHOTS") or tmp_path_factory.mktemp("shots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def gui(desktop_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory,
        shots: Path) -> Iterator[Gui]:
    with running_gui(tmp_path_factory.mktemp("gui-home"), shots, desktop_daemon) as g:
        yield g


@pytest.fixture
def shot(gui: Gui, request: pytest.FixtureRequest) -> Iterator[None]:
    """Every desktop test leaves a screenshot of how it ended, passed or not, and no
    overlay."""
    yield
    gui.screenshot(request.node.name)
    gui.daemon.discard_all()


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("desktop-images")
    helpers.traversable(root)
    return root


def new_image(images: Path, name: str, size: str = "64M") -> Path:
    tree = images / f"{name}.tree"
    tree.mkdir()
    (tree / "hello.txt").write_text("hello\n")
    img = helpers.make_image(images / f"{name}.img", tree, size=size)
    img.chmod(0o644)
    os.chown(img, NOBODY, NOBODY)  # the desktop user's own image: commits write into it
    return img
