"""Exceptions to D-Bus errors, in one place.

Domain errors keep their name (``org.overlayd.Overlayd1.Error.<Name>``) and message;
spec validation errors are ``InvalidArgs`` naming the field; anything unexpected is
``Failed`` with "internal error, see the journal", its traceback logged and never sent.
"""

from __future__ import annotations

import logging

from dbus_next import DBusError

from overlayd.bus.names import ACCESS_DENIED, ERROR_PREFIX, FAILED, INVALID_ARGS
from overlayd.errors import OverlaydError

log = logging.getLogger("overlayd.bus")

INTERNAL = "Internal error, see the journal."


class InvalidArgs(Exception):
    """A request the bus layer refuses before the engine sees it."""


class AccessDenied(Exception):
    def __init__(self, message: str, name: str = ACCESS_DENIED) -> None:
        super().__init__(message)
        self.dbus_error = name


def to_dbus(exc: BaseException) -> DBusError:
    if isinstance(exc, DBusError):
        return exc
    if isinstance(exc, InvalidArgs):
        return DBusError(INVALID_ARGS, str(exc))
    if isinstance(exc, AccessDenied):
        return DBusError(exc.dbus_error, str(exc))
    if isinstance(exc, OverlaydError):
        return DBusError(ERROR_PREFIX + exc.dbus_name, str(exc))
    log.error("Internal error while serving a call: %r", exc, exc_info=exc)
    return DBusError(FAILED, INTERNAL)
