"""One error table: D-Bus names from class names, the mapper, overlayctl's exit codes, and
the table held to what dbus/*.xml documents (no bus, no root)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from dbus_next import DBusError

from overlayd import ctl, errors
from overlayd.bus.client import ClientError
from overlayd.bus.errors import (
    BY_NAME,
    ERRORS,
    INTERNAL,
    AccessDenied,
    InteractiveAuthorizationRequired,
    InvalidArgs,
    error_name,
    shown,
    to_dbus,
)

DBUS_DIR = Path(__file__).resolve().parents[2] / "dbus"


def documented_errors() -> set[str]:
    """The error names the interface files list: 'Errors: prefix.{A, B} and prefix.{C}'."""
    names: set[str] = set()
    for xml in DBUS_DIR.glob("org.overlayd.Overlayd1.*.xml"):
        text = " ".join(xml.read_text().split())
        for prefix, members in re.findall(r"([\w.]+\.Error)\.\{([^}]*)\}", text):
            names |= {f"{prefix}.{m.strip()}" for m in members.split(",")}
    return names


def test_the_table_is_what_the_interface_files_document() -> None:
    assert documented_errors() == set(BY_NAME)


@pytest.mark.parametrize(("cls", "name"), [
    (errors.OverlaydError, "org.overlayd.Overlayd1.Error.Failed"),
    (errors.NoSuchOverlay, "org.overlayd.Overlayd1.Error.NoSuchOverlay"),
    (errors.InvalidSpec, "org.overlayd.Overlayd1.Error.InvalidSpec"),
    (InvalidArgs, "org.freedesktop.DBus.Error.InvalidArgs"),
    (AccessDenied, "org.freedesktop.DBus.Error.AccessDenied"),
    (InteractiveAuthorizationRequired,
     "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"),
])
def test_names_come_from_class_names(cls: type[Exception], name: str) -> None:
    assert error_name(cls) == name
    assert BY_NAME[name] is cls


def test_every_domain_error_is_in_the_table() -> None:
    assert set(errors.ALL_ERRORS) <= set(ERRORS)
    assert len(BY_NAME) == len(ERRORS), "two classes with one name"


def test_a_new_error_class_is_named_after_itself() -> None:
    class Frozen(errors.OverlaydError):
        pass

    assert Frozen.dbus_name == "Frozen" and errors.OverlaydError.dbus_name == "Failed"


def test_mapping() -> None:
    e = to_dbus(errors.NoSuchOverlay("x"))
    assert (e.type, e.text) == ("org.overlayd.Overlayd1.Error.NoSuchOverlay",
                                "There is no overlay named 'x'.")
    e = to_dbus(InteractiveAuthorizationRequired("ask first"))
    assert (e.type, e.text) == ("org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
                                "ask first")


def test_an_unexpected_exception_is_logged_and_never_sent(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "overlayd.bus"):
        e = to_dbus(KeyError("/run/overlayd/secret"))
    assert (e.type, e.text) == ("org.overlayd.Overlayd1.Error.Failed", INTERNAL)
    assert "secret" in caplog.text


def test_dbus_nexts_own_messages_are_cut() -> None:
    long = "i" * 100_000
    e = to_dbus(DBusError("org.freedesktop.DBus.Error.UnknownInterface",
                          f'could not find an interface "{long}" at path: "/o"'))
    assert e.text == f'could not find an interface "{"i" * 64}..." at path: "/o"'


def test_shown() -> None:
    assert shown("short") == "short"
    assert shown("x" * 65) == "x" * 64 + "..."
    assert shown("x" * 300, 200) == "x" * 200 + "..."


# -- overlayctl -----------------------------------------------------------------------------

@pytest.mark.parametrize(("cls", "code"), [
    (InvalidArgs, ctl.EXIT_USAGE), (errors.InvalidSpec, ctl.EXIT_DATAERR),
    (errors.NoSuchOverlay, ctl.EXIT_NO_SUCH), (AccessDenied, ctl.EXIT_DENIED),
    (InteractiveAuthorizationRequired, ctl.EXIT_DENIED), (errors.OverlayBusy, ctl.EXIT_BUSY),
    (errors.OverlayExists, ctl.EXIT_EXISTS), (errors.MountFailed, ctl.EXIT_FAILED),
    (errors.ImageInUse, ctl.EXIT_BUSY),
    (errors.OverlaydError, ctl.EXIT_FAILED),
])
def test_exit_codes_come_from_the_table(cls: type[Exception], code: int) -> None:
    reply = ClientError(error_name(cls), "message")
    assert reply.error is cls and reply.is_a(cls)
    assert ctl.exit_code(cls) == code


def test_the_exit_codes_overlayctl_documents() -> None:
    """Each class of the table is named on the line of its exit code in overlayctl's help."""
    assert ctl.__doc__ is not None
    lines: dict[int, str] = {}
    code = 0
    for line in ctl.__doc__.split("Exit codes", 1)[1].splitlines():
        m = re.match(r"\s+(\d+)  ", line)
        code = int(m[1]) if m else code  # a line without a code goes on the one before
        lines[code] = lines.get(code, "") + line
    documented = {name: code for code, text in lines.items()
                  for names in re.findall(r"\(([^)]*)\)", text)
                  for name in re.findall(r"\b[A-Z]\w+", names)}
    assert documented == {cls.__name__ if cls is not errors.OverlaydError else "Failed":
                          ctl.exit_code(cls) for cls in ERRORS}


def test_errors_that_are_not_overlayds() -> None:
    assert ClientError("org.freedesktop.DBus.Error.ServiceUnknown", "gone").unreachable
    assert ClientError("org.freedesktop.DBus.Error.NoReply", "slow").unreachable
    other = ClientError("org.example.Error.Odd", "odd")
    assert other.error is None and not other.unreachable and not other.is_a(Exception)
