"""Exceptions to D-Bus errors: one table, one mapper.

An error's D-Bus name is derived from its class name, by one rule:

- overlayd's own errors (``overlayd.errors``): ``org.overlayd.Overlayd1.Error.<Class>``,
  ``OverlaydError`` itself being ``Failed``;
- the bus layer's refusals (``BusError`` below): the standard
  ``org.freedesktop.DBus.Error.<Class>``.

``ERRORS`` lists every class a reply can name; a test holds it to what dbus/*.xml documents,
and overlayctl derives its exit codes from it. Anything else that reaches ``to_dbus`` is
unexpected: ``Failed`` with "Internal error, see the journal", its traceback logged and
never sent.

One rule for a bad spec, whatever layer finds it: a call of the wrong *shape* (an unknown
key or option, a variant of the wrong type, an fd index with no fd) is ``InvalidArgs``; a
well-formed spec with a bad *value* (what pydantic refuses, or the engine later: a missing
mount point, the wrong file system) is ``InvalidSpec``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from overlayd.bus.names import DBUS_ERROR_PREFIX, ERROR_PREFIX
from overlayd.errors import ALL_ERRORS, OverlaydError

if TYPE_CHECKING:  # overlayctl's reading commands read BY_NAME without loading dbus-next
    from dbus_next import DBusError

INTERNAL = "Internal error, see the journal."
ECHO_LIMIT = 64  # characters of a caller's string that an error message repeats


class BusError(Exception):
    """A refusal of the bus layer, named like the standard D-Bus error of its class name."""


class InvalidArgs(BusError):
    """The call has the wrong shape: argument types, unknown keys or options."""


class AccessDenied(BusError):
    """The caller may not do this (polkit said no, or polkit is not there to ask)."""


class InteractiveAuthorizationRequired(AccessDenied):
    """polkit would ask for a password, but the call did not allow interaction."""


class LimitsExceeded(BusError):
    """The caller has too many calls in flight."""


class UnknownMethod(BusError):
    """No such method (for a call without an interface, where dbus-next cannot tell)."""


ERRORS: tuple[type[Exception], ...] = (
    *ALL_ERRORS, InvalidArgs, AccessDenied, InteractiveAuthorizationRequired, LimitsExceeded,
    UnknownMethod)


def error_name(cls: type[Exception]) -> str:
    if issubclass(cls, OverlaydError):
        return ERROR_PREFIX + cls.dbus_name
    if issubclass(cls, BusError):
        return DBUS_ERROR_PREFIX + cls.__name__
    raise TypeError(f"{cls.__name__} has no D-Bus error name")


BY_NAME: dict[str, type[Exception]] = {error_name(cls): cls for cls in ERRORS}


def shown(text: str, limit: int = ECHO_LIMIT) -> str:
    """TEXT as an error message may repeat it: a caller may send a megabyte, the reply
    shows the start of it."""
    return text if len(text) <= limit else text[:limit] + "..."


# dbus-next's own messages (unknown property, interface, ...) quote what the caller sent.
_QUOTED = re.compile(r'"([^"]{' + str(ECHO_LIMIT + 1) + r',})"')


def to_dbus(exc: BaseException) -> DBusError:
    from dbus_next import DBusError

    if isinstance(exc, DBusError):  # raised by dbus-next's own handlers
        return DBusError(exc.type, _QUOTED.sub(lambda m: f'"{shown(m[1])}"', exc.text))
    if isinstance(exc, OverlaydError | BusError):
        return DBusError(error_name(type(exc)), str(exc))
    import logging  # here: overlayctl reads this module's table and logs nothing

    logging.getLogger("overlayd.bus").error("Internal error while serving a call: %r", exc,
                                            exc_info=exc)
    return DBusError(error_name(OverlaydError), INTERNAL)
