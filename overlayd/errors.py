"""The errors overlayd reports, one class per D-Bus error name.

The class name *is* the suffix of the D-Bus error ``org.overlayd.Overlayd1.Error.<Name>``
(see DESIGN.md): ``dbus_name`` is derived from it, once per class, and the bus adapter
(``overlayd/bus/errors.py``) maps by it and nothing else::

    OverlaydError            base; also the generic ``Failed``
    +-- NoSuchOverlay        no overlay of that name
    +-- OverlayExists        the name is taken
    +-- OverlayBusy          a process holds the mount; ``holders`` names them
    +-- InvalidSpec          the request cannot be honoured as written
    +-- NoSpace              the image has no room for the changes
    +-- LimitExceeded        beyond a configured or physical limit
    +-- MountFailed          the kernel refused a mount or a loop device
    +-- CommitFailed         the commit stopped; the writes are still in RAM
    +-- ImageInUse           others use the image; ``users`` names them
    +-- Cancelled            a job was cancelled (Job.Cancel); nothing was lost

Messages are sentences a person can act on: they name the overlay and the path,
never a Python traceback.
"""

from __future__ import annotations

from typing import Any, ClassVar


class OverlaydError(Exception):
    """Base class; on the bus it is ``Failed``."""

    # The suffix of the D-Bus error name: the class name, except for this base class. Set
    # by __init_subclass__ so that a new error class cannot get a name that is not its own.
    dbus_name: ClassVar[str] = "Failed"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.dbus_name = cls.__name__

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NoSuchOverlay(OverlaydError):
    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"There is no overlay named '{name}'.")
        self.name = name


class OverlayExists(OverlaydError):
    def __init__(self, name: str) -> None:
        super().__init__(f"An overlay named '{name}' already exists.")
        self.name = name


class OverlayBusy(OverlaydError):
    def __init__(self, message: str, holders: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.holders = holders or []


class InvalidSpec(OverlaydError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # the spec key at fault, when there is one


class NoSpace(OverlaydError):
    """The image has no room for the changes."""


class LimitExceeded(OverlaydError):
    """Beyond a configured or physical limit."""


class MountFailed(OverlaydError):
    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class CommitFailed(OverlaydError):
    """The commit stopped; the writes are still in RAM."""


class ImageInUse(OverlaydError):
    """Someone else reads or writes the image: other overlays, loop devices, mounts,
    processes or QEMU-style locks, named in ``users``. Nothing was changed."""

    def __init__(self, message: str, users: list[str] | None = None) -> None:
        super().__init__(message)
        self.users = users or []


def describe_users(users: list[str]) -> str:
    """'overlay 'b', loop device /dev/loop3, ...' for an ImageInUse message."""
    shown = "; ".join(users[:8])
    more = len(users) - 8
    return shown + (f"; and {more} more" if more > 0 else "")


class Cancelled(OverlaydError):
    """A job was cancelled at its caller's or another's request (Job.Cancel). Like udisks2's
    ``Error.Cancelled``: the operation stopped at a safe point and nothing was lost."""


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
    ImageInUse,
    Cancelled,
)


def describe_holders(holders: list[tuple[int, str]]) -> str:
    """'bash (pid 12), sleep (pid 40)' for a busy message."""
    if not holders:
        return "a process that could not be identified"
    shown = ", ".join(f"{comm} (pid {pid})" for pid, comm in holders[:8])
    more = len(holders) - 8
    return shown + (f" and {more} more" if more > 0 else "")
