"""The Overlays app, driven through AT-SPI against a real overlayd (see conftest.py).

The app is a desktop user's (uid 65534): overlays named granted-* are theirs to commit and
discard; anything else polkit refuses, and the app must say so in the daemon's words.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import helpers
from tests.desktop.conftest import NOBODY, Gui, new_image
from tests.gate import OpenGate

pytestmark = pytest.mark.usefixtures("shot")


def create(gui: Gui, name: str, image: Path, *extra: str) -> str:
    r = gui.daemon.ctl("create", name, str(image), *extra, uid=NOBODY)
    assert r.returncode == 0, r.stderr
    return gui.daemon.ctl("status", name, "--json").stdout


def mountpoint(gui: Gui, name: str) -> str:
    return gui.daemon.prop(f"/org/overlayd/Overlayd1/overlay/{name.replace('-', '_2d')}",
                           "MountPoint")


def row_labels(gui: Gui, name: str) -> list[str]:
    """The names of everything the row of overlay NAME shows, as AT-SPI reads them."""
    tree, out, inside = gui.tree(), [], False
    for role, label in tree:
        if role == "list item":
            inside = label == name
        elif inside:
            out.append(label)
    return out


def test_an_overlay_made_with_overlayctl_appears_live(gui: Gui, images: Path) -> None:
    img = new_image(images, "granted-appear")
    mark = gui.mark()
    create(gui, "granted-appear", img)
    gui.wait_line("OBJECTS 1 granted-appear", after=mark)
    assert ("list item", "granted-appear") in gui.tree()
    shown = " ".join(row_labels(gui, "granted-appear"))
    assert str(img) in shown and "active" in shown and "RAM" in shown, shown
    for button in ("Commit", "Discard", "Changes", "Open"):
        assert button in row_labels(gui, "granted-appear")
    gui.daemon.ctl("discard", "granted-appear", uid=NOBODY)
    gui.wait_line("OBJECTS 0", after=mark)


def test_commit_shows_progress_and_the_image_holds_the_change(gui: Gui, images: Path) -> None:
    img = new_image(images, "granted-commit")
    create(gui, "granted-commit", img)
    mnt = mountpoint(gui, "granted-commit")
    Path(mnt, "new.txt").write_text("from the app's test\n")
    mark = gui.mark()
    gui.click("granted-commit", "Commit")
    gui.wait_line("JOB granted-commit", after=mark)
    done = gui.wait_line("COMPLETED granted-commit", after=mark)
    assert "True" in done, done
    r = helpers.sh("debugfs", "-R", "cat /new.txt", str(img))
    assert r.stdout == "from the app's test\n"
    gui.daemon.ctl("discard", "granted-commit", uid=NOBODY)


def test_cancel_during_a_large_commit_keeps_every_write(gui: Gui, images: Path) -> None:
    """The commit is held at a known file (tests/gate.py) while the app shows its job: no
    race with the machine's speed."""
    img = new_image(images, "granted-cancel", size="256M")
    create(gui, "granted-cancel", img, "--size", "128M")
    mnt = mountpoint(gui, "granted-cancel")
    for f in ("a1", "a2", "m", "z1", "z2"):
        with open(Path(mnt, f), "wb") as out:
            out.write(os.urandom(1 << 20) * 8)
    before = helpers.snapshot(mnt)
    upper = gui.daemon.runtime / "granted-cancel" / "rw" / "upper"
    mark = gui.mark()
    with OpenGate(upper / "m") as gate:
        gui.click("granted-cancel", "Commit")
        gate.wait()
        gui.wait_line("JOB granted-cancel", after=mark)
        assert any(role == "progress bar" for role, _ in gui.tree())
        assert "Cancel" in row_labels(gui, "granted-cancel")
        gui.screenshot("commit-in-progress")
        gui.click("granted-cancel", "Cancel")
        gui.wait_line("OK cancel granted-cancel", after=mark)
    done = gui.wait_line("COMPLETED granted-cancel", after=mark)
    assert "False" in done and "Nothing was lost" in done, done
    gui.wait_line("SHOWN Commit of granted-cancel", after=mark)
    helpers.wait_for(lambda: gui.daemon.prop(
        "/org/overlayd/Overlayd1/overlay/granted_2dcancel", "State") == "active", 60,
        "the overlay to be mounted again")
    assert helpers.diff_snapshots(before, helpers.snapshot(mnt)) == []


def test_discard_asks_with_the_number_of_changes_then_removes(gui: Gui, images: Path) -> None:
    img = new_image(images, "granted-discard")
    create(gui, "granted-discard", img)
    mnt = mountpoint(gui, "granted-discard")
    for i in range(3):
        Path(mnt, f"f{i}").write_text("x")
    mark = gui.mark()
    gui.click("granted-discard", "Discard")
    assert gui.wait_line("ASK discard granted-discard", after=mark).endswith(" 3")
    assert any("3 changes" in label for _, label in gui.tree())
    gui.screenshot("discard-confirmation")
    gui.click_dialog("Discard 3 changes")
    gui.wait_line("OK Could not discard granted-discard", after=mark)  # the call's label
    gui.wait_line("OBJECTS 0", after=mark)
    assert ("list item", "granted-discard") not in gui.tree()


def test_new_overlay_from_an_image_file_end_to_end(gui: Gui, images: Path) -> None:
    """New overlay, the file chooser (the path typed as a person would: keys through AT-SPI),
    the name asked, Create: the daemon got the image as image_fd from the user."""
    img = new_image(images, "granted-new")
    mark = gui.mark()
    r = gui.atspi("click-window", "New overlay")
    assert r.returncode == 0, r.stdout + r.stderr
    helpers.wait_for(lambda: ("push button", "Choose Choose") in gui.tree_all(), 30,
                     "the file chooser")
    r = gui.atspi("type", str(img))  # typing a path opens the chooser's location entry
    assert r.returncode == 0, r.stdout + r.stderr
    helpers.wait_for(lambda: any(str(img) in label and "as:" in label
                                 for _, label in gui.tree_all()), 30, "the name dialog")
    assert ("text", "GtkEntry") in gui.tree_all()
    gui.screenshot("new-overlay-name")
    gui.click_dialog("Create")
    gui.wait_line("OK create granted-new", after=mark)
    gui.wait_line("OBJECTS 1 granted-new", after=mark)
    path = "/org/overlayd/Overlayd1/overlay/granted_2dnew"
    assert gui.daemon.prop(path, "Image") == str(img)
    assert gui.daemon.prop(path, "OwnerUID").endswith("65534")


def test_new_overlay_by_the_apps_action(gui: Gui, images: Path) -> None:
    """app.create(PATH, NAME) on the session bus: the part after the chooser, for scripts."""
    img = new_image(images, "granted-action")
    mark = gui.mark()
    gui.activate("create", str(img), "granted-action")
    gui.wait_line("OK create granted-action", after=mark)
    gui.wait_line("OBJECTS 1 granted-action", after=mark)


def test_an_image_the_user_cannot_read_is_refused_in_words(gui: Gui, images: Path) -> None:
    img = new_image(images, "granted-secret")
    os.chown(img, 0, 0)
    img.chmod(0o600)
    mark = gui.mark()
    gui.activate("create", str(img), "granted-secret")
    shown = gui.wait_line("SHOWN Could not open", after=mark)
    assert "Permission denied" in shown


def test_a_denied_action_shows_the_daemons_message(gui: Gui, images: Path) -> None:
    img = new_image(images, "granted-denied")
    mark = gui.mark()
    r = gui.daemon.ctl("create", "mine", str(img))  # root's: nobody may not commit it
    assert r.returncode == 0, r.stderr
    gui.wait_line("OBJECTS 1 mine", after=mark)
    gui.click("mine", "Commit")
    shown = gui.wait_line("SHOWN Could not commit mine", after=mark)
    # the daemon's sentence, not an error name; "no polkit authentication agent answered"
    # is its answer to a call that allowed interactive authorization (without the flag it
    # says the call did not allow it): the app sets ALLOW_INTERACTIVE_AUTHORIZATION
    assert "overlays of other users" in shown, shown
    assert "no polkit authentication agent answered" in shown, shown
    assert "GDBus" not in shown and ".Error." not in shown, shown
    assert any("overlays of other users" in label for _, label in gui.tree())
    gui.daemon.ctl("discard", "mine")


def test_changes_lists_the_diff(gui: Gui, images: Path) -> None:
    img = new_image(images, "granted-changes")
    create(gui, "granted-changes", img)
    mnt = mountpoint(gui, "granted-changes")
    Path(mnt, "added.txt").write_text("new\n")
    Path(mnt, "hello.txt").unlink()
    mark = gui.mark()
    gui.click("granted-changes", "Changes")
    assert gui.wait_line("CHANGES granted-changes", after=mark).endswith(" 2")
    tree = gui.tree()
    assert ("list item", "/added.txt") in tree and ("list item", "/hello.txt") in tree
    assert ("label", "added") in tree and ("label", "deleted") in tree
    gui.screenshot("changes")
    gui.click_dialog("Close")


def test_high_usage_raises_a_notification_and_colours_the_bar(gui: Gui, images: Path) -> None:
    """ok -> high -> critical: one notification per rise, in words, each reaching the
    session's notification server; the bar turns orange, then red (read from the pixels of
    the screenshot: libadwaita's warning and error colours); going down notifies nothing."""
    img = new_image(images, "granted-full")
    create(gui, "granted-full", img, "--size", "16M")
    mnt = Path(mountpoint(gui, "granted-full"))
    before = len(gui.notifications())
    mark = gui.mark()
    (mnt / "a").write_bytes(b"x" * (27 << 19))  # 13.5 MiB of 16: 84%, high (80%)
    assert gui.wait_line("NOTIFY granted-full", after=mark) == "NOTIFY granted-full high"
    helpers.wait_for(lambda: any("Overlay granted-full: RAM for the writes is getting full"
                                 in n for n in gui.notifications()[before:]), 30,
                     "the notification server to be told: high")
    assert any("RAM for the writes is getting full" in label for _, label in gui.tree())
    high = gui.screenshot("usage-high")
    assert colour_pixels(high, ORANGE) > 100

    mark = gui.mark()
    (mnt / "b").write_bytes(b"x" * (2 << 20))  # 15.5 MiB: 97%, critical (95%)
    assert gui.wait_line("NOTIFY granted-full", after=mark) == "NOTIFY granted-full critical"
    helpers.wait_for(lambda: any("Overlay granted-full: RAM for the writes is almost full"
                                 in n for n in gui.notifications()[before:]), 30,
                     "the notification server to be told: critical")
    shot = gui.screenshot("usage-critical")
    # the Discard button is red too: the bar adds its own
    assert colour_pixels(shot, ORANGE) == 0
    assert colour_pixels(shot, RED) > colour_pixels(high, RED) + 100

    mark = gui.mark()
    (mnt / "a").unlink()
    (mnt / "b").unlink()
    gui.wait_line("ROW granted-full active ok", after=mark)
    assert not any(ln.startswith("NOTIFY") for ln in gui.lines()[mark:])
    assert len(gui.notifications()) == before + 2


ORANGE, RED = "#e5a50a", "#e01b24"  # libadwaita's @warning_bg_color and @error_bg_color


def colour_pixels(png: Path, colour: str) -> int:
    """How many pixels of PNG are exactly COLOUR (ImageMagick)."""
    r = helpers.sh("convert", str(png), "-fill", "black", "+opaque", colour, "-fill", "white",
                   "-opaque", colour, "-format", "%[fx:round(mean*w*h)]", "info:")
    return int(r.stdout)

def test_open_shows_the_mount_point_in_the_desktops_file_manager(gui: Gui,
                                                                 images: Path) -> None:
    """The session's default handler of inode/directory (conftest.file_manager) gets the
    mount point: Exec's %u is the URI, which GLib hands to the program as a path when it is
    a local file (file:///x -> /x)."""
    img = new_image(images, "granted-open")
    create(gui, "granted-open", img)
    mnt = mountpoint(gui, "granted-open")
    mark = gui.mark()
    gui.click("granted-open", "Open")
    assert gui.wait_line("OK open granted-open", after=mark).endswith(Path(mnt).as_uri())
    helpers.wait_for(lambda: mnt in gui.opened() or Path(mnt).as_uri() in gui.opened(), 30,
                     f"the file manager to be given {mnt}")
