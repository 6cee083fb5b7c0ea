"""The errors overlayd reports, one class per D-Bus error name.

The class name *is* the suffix of the D-Bus error ``org.overlayd.Overlayd1.Error.<Name>``
(see DESIGN.md), so the bus adapter maps them by name and nothing else::

    OverlaydError            base; also the generic ``Failed``
    +-- NoSuchOverlay        no overlay of that name
    +-- OverlayExists        the name is taken
    +-- OverlayBusy          a process holds the mount; ``holders`` names them
    +-- InvalidSpec          the request cannot be honoured as written
    +-- NoSpace              the image has no room for the changes
    +-- LimitExceeded        beyond a configured or physical limit
    +-- MountFailed          the kernel refused a mount or a loop device
    +-- CommitFailed         the commit stopped; the writes are still in RAM

Messages are sentences a person can act on: they name the overlay and the path,
never a Python traceback.
"""

from __future__ import annotations


class OverlaydError(Exception):
    """Base class; on the bus it is ``Failed``."""

    dbus_name = "Failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NoSuchOverlay(OverlaydError):
    dbus_name = "NoSuchOverlay"

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"There is no overlay named '{name}'.")
        self.name = name


class OverlayExists(OverlaydError):
    dbus_name = "OverlayExists"

    def __init__(self, name: str) -> None:
        super().__init__(f"An overlay named '{name}' already exists.")
        self.name = name


class OverlayBusy(OverlaydError):
    dbus_name = "OverlayBusy"

    def __init__(self, message: str, holders: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.holders = holders or []


class InvalidSpec(OverlaydError):
    dbus_name = "InvalidSpec"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # the spec key at fault, when there is one


class NoSpace(OverlaydError):
    dbus_name = "NoSpace"


class LimitExceeded(OverlaydError):
    dbus_name = "LimitExceeded"


class MountFailed(OverlaydError):
    dbus_name = "MountFailed"

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class CommitFailed(OverlaydError):
    dbus_name = "CommitFailed"


ALL_ERRORS: tuple[type[OverlaydError], ...] = (
    OverlaydError,
    NoSuchOverlay,
    OverlayExists,
    OverlayBusy,
    InvalidSpec,
    NoSpace,
    LimitExceeded,
    MountFailed,
    CommitFailed,
)


def describe_holders(holders: list[tuple[int, str]]) -> str:
    """'bash (pid 12), sleep (pid 40)' for a busy message."""
    if not holders:
        return "a process that could not be identified"
    shown = ", ".join(f"{comm} (pid {pid})" for pid, comm in holders[:8])
    more = len(holders) - 8
    return shown + (f" and {more} more" if more > 0 else "")
