"""Interactive authorization: the app's calls reach the desktop user's polkit agent.

polkit says auth_self for the desktop user's commit of an overlay named auth-*
(conftest.DESKTOP_RULES). The agent is polkit's own pkttyagent, registered for the app's
process, and the password it is given is checked by PAM (polkit_agent.py). polkitd only
asks an agent when the daemon allows interaction, which it does only when the app's call
carries ALLOW_INTERACTIVE_AUTHORIZATION.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import helpers
from tests.desktop.conftest import HERE, SYSTEM_PY, Gui, new_image
from tests.desktop.polkit_agent import PASSWORD, TtyAgent
from tests.desktop.test_app import create, mountpoint

pytestmark = pytest.mark.usefixtures("shot")


def start_commit(gui: Gui, images: Path, name: str, tmp_path: Path) -> tuple[Path, TtyAgent]:
    img = new_image(images, f"granted-{name}")
    create(gui, name, img)
    Path(mountpoint(gui, name), "typed.txt").write_text("after a password\n")
    agent = TtyAgent(tmp_path, gui.daemon.address, gui.app_pid)
    gui.click(name, "Commit")
    out = agent.wait_for("Password:")
    assert "AUTHENTICATING FOR org.overlayd.overlayd1.commit" in out, out
    assert "Authenticating as: nobody" in out, out
    return img, agent


def test_the_agent_asks_and_the_right_password_lets_the_commit_through(
        gui: Gui, images: Path, tmp_path: Path) -> None:
    mark = gui.mark()
    img, agent = start_commit(gui, images, "auth-ok", tmp_path)
    try:
        gui.screenshot("commit-waiting-for-a-password")
        agent.type(PASSWORD)
        agent.wait_for("AUTHENTICATION COMPLETE")
        done = gui.wait_line("COMPLETED auth-ok", after=mark)
        assert "True" in done, done
    finally:
        agent.stop()
    r = helpers.sh("debugfs", "-R", "cat /typed.txt", str(img))
    assert r.stdout == "after a password\n"


def test_a_wrong_password_shows_the_daemons_refusal_in_words(
        gui: Gui, images: Path, tmp_path: Path) -> None:
    mark = gui.mark()
    img, agent = start_commit(gui, images, "auth-wrong", tmp_path)
    try:
        agent.type("not the password")
        shown = gui.wait_line("SHOWN Could not commit auth-wrong", after=mark)
    finally:
        agent.stop()
    assert "Not authorized to commit" in shown and "uid 65534" in shown, shown
    assert "GDBus" not in shown and ".Error." not in shown, shown
    assert not any(ln.startswith("JOB auth-wrong") for ln in gui.lines()[mark:])
    r = subprocess.run(["debugfs", "-R", "cat /typed.txt", str(img)], capture_output=True,
                       text=True)
    assert "after a password" not in r.stdout


def test_an_agent_killed_at_the_prompt_shows_the_daemons_refusal_in_words(
        gui: Gui, images: Path, tmp_path: Path) -> None:
    """Ctrl-C at pkttyagent's prompt: the agent goes, and polkitd answers no."""
    mark = gui.mark()
    _img, agent = start_commit(gui, images, "auth-ctrlc", tmp_path)
    try:
        agent.type("\x03")
        shown = gui.wait_line("SHOWN Could not commit auth-ctrlc", after=mark)
    finally:
        agent.stop()
    assert "Not authorized to commit" in shown and "uid 65534" in shown, shown
    assert "GDBus" not in shown and ".Error." not in shown, shown


def test_a_dismissed_prompt_shows_the_daemons_refusal_in_words(gui: Gui, images: Path) -> None:
    """A graphical agent's Cancel (cancel_agent.py): polkitd says dismissed, and so does the
    daemon."""
    img = new_image(images, "granted-auth-dismiss")
    create(gui, "auth-dismiss", img)
    agent = subprocess.Popen([SYSTEM_PY, str(HERE / "cancel_agent.py"), str(gui.app_pid)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={"DBUS_SYSTEM_BUS_ADDRESS": gui.daemon.address})
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "REGISTERED"
        mark = gui.mark()
        gui.click("auth-dismiss", "Commit")
        begin = agent.stdout.readline()
        assert begin.startswith("BEGIN org.overlayd.overlayd1.commit "), begin
        assert 'overlay "auth-dismiss"' in begin, begin  # the daemon's sentence for the prompt
        shown = gui.wait_line("SHOWN Could not commit auth-dismiss", after=mark)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    assert "authentication to commit overlays" in shown and "was dismissed" in shown, shown
    assert "nothing was done" in shown, shown
    assert "GDBus" not in shown and ".Error." not in shown, shown
