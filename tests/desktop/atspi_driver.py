"""Drive the Overlays app through AT-SPI, as a screen reader or a person would.

    /usr/bin/python3 atspi_driver.py dump
    /usr/bin/python3 atspi_driver.py click ROW BUTTON      (a button in the row named ROW)
    /usr/bin/python3 atspi_driver.py click-dialog BUTTON   (a button in another window: a dialog)
    /usr/bin/python3 atspi_driver.py toggle|state SWITCH   (flip a switch / print its state)

Runs with Debian's python3 (gir1.2-atspi-2.0), on the app's session bus
(DBUS_SESSION_BUS_ADDRESS). dump prints one line per node: depth, role, name.
"""

import sys
import time

import gi

gi.require_version("Atspi", "2.0")
from gi.repository import Atspi, GLib  # noqa: E402

APP = "overlayd-gtk"
SWITCHES = ("switch", "toggle button", "check box")


def walk(acc, depth=0, out=None):
    out = [] if out is None else out
    out.append((depth, acc.get_role_name(), acc.get_name() or "", acc))
    for i in range(acc.get_child_count()):
        c = acc.get_child_at_index(i)
        if c is not None:
            walk(c, depth + 1, out)
    return out


def find_app():
    desk = Atspi.get_desktop(0)
    for _ in range(100):
        for i in range(desk.get_child_count()):
            a = desk.get_child_at_index(i)
            if a is not None and a.get_name() == APP:
                return a
        time.sleep(0.1)
    sys.exit("the app is not on the AT-SPI desktop")


def main():
    app, cmd = find_app(), sys.argv[1]
    if cmd == "dump":
        for d, role, name, _ in walk(app):
            print(f"{d}\t{role}\t{name}".replace("\n", " / "))
        return 0
    if cmd == "click":
        row_name, button = sys.argv[2], sys.argv[3]
        in_row, row_depth = False, 0
        for d, role, name, acc in walk(app.get_child_at_index(0)):
            if in_row and d <= row_depth:
                in_row = False
            if role == "list item" and name == row_name:
                in_row, row_depth = True, d
            elif in_row and role == "push button" and name == button:
                acc.do_action(0)
                print("clicked", row_name, button)
                return 0
        print("no button", button, "in row", row_name)
        return 1
    if cmd == "click-window":  # a button of the main window outside the list: New overlay
        for _d, role, name, acc in walk(app.get_child_at_index(0)):
            if role == "push button" and name == sys.argv[2]:
                acc.do_action(0)
                print("clicked", name)
                return 0
        return 1
    if cmd in ("toggle", "state"):  # a switch (or check box) of the main window, by name
        for _d, role, name, acc in walk(app.get_child_at_index(0)):
            if role in SWITCHES and name == sys.argv[2]:
                if cmd == "toggle":
                    acc.do_action(0)
                checked = acc.get_state_set().contains(Atspi.StateType.CHECKED)
                print("checked" if checked else "unchecked")
                return 0
        print("no switch", sys.argv[2])
        return 1
    if cmd == "type":  # keys to whatever has the keyboard focus, then Return
        for ch in sys.argv[2]:
            Atspi.generate_keyboard_event(ord(ch), None, Atspi.KeySynthType.SYM)
            time.sleep(0.01)
        Atspi.generate_keyboard_event(0xFF0D, None, Atspi.KeySynthType.SYM)
        return 0
    if cmd == "dump-all":
        for w in range(app.get_child_count()):
            for d, role, name, _ in walk(app.get_child_at_index(w)):
                print(f"{w}:{d}\t{role}\t{name}".replace("\n", " / "))
        return 0
    if cmd == "click-dialog":
        button = sys.argv[2]
        for _ in range(50):
            for w in range(1, app.get_child_count()):
                for _d, role, name, acc in walk(app.get_child_at_index(w)):
                    # libadwaita 1.2 names response buttons twice ("Keep Keep"); of the
                    # squeezer's two layouts, either does
                    if role == "push button" and name in (button, f"{button} {button}"):
                        acc.do_action(0)
                        print("clicked", button)
                        return 0
            time.sleep(0.1)
        print("no dialog button", button)
        for w in range(app.get_child_count()):
            for d, role, name, _ in walk(app.get_child_at_index(w)):
                print(f"{w}:{d}\t{role}\t{name}".replace("\n", " / "))
        return 1
    return 2


def main_retrying():
    """A window that opens or closes during the walk ("The application no longer exists")
    makes the walk start again; every click happens after a whole walk, so none is doubled."""
    for _ in range(30):
        try:
            return main()
        except GLib.Error as e:
            last = e
            time.sleep(0.1)
    print("AT-SPI kept failing:", last.message)
    return 1


if __name__ == "__main__":
    sys.exit(main_retrying())
