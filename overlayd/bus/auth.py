"""Who is calling, and may they do this? Asked after cheap validation, before any change.

``Caller`` is read from the bus daemon (GetConnectionCredentials of the sender), so it
cannot be forged by the client. ``Authorizer`` is the hook every state change goes
through; ``RootOnly`` is what overlayd does when polkit is not available (DESIGN.md):
root may, everyone else is refused with a message that says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dbus_next import Message, MessageFlag, MessageType
from dbus_next.aio import MessageBus

from overlayd.bus.errors import AccessDenied
from overlayd.bus.names import ACTION_PREFIX


@dataclass(frozen=True)
class Caller:
    sender: str
    uid: int
    pid: int
    interactive: bool  # the call carries ALLOW_INTERACTIVE_AUTHORIZATION


async def identify(bus: MessageBus, msg: Message) -> Caller:
    reply = await bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="GetConnectionCredentials",
        signature="s", body=[msg.sender]))
    if reply.message_type is MessageType.ERROR:
        raise AccessDenied(f"Cannot identify the caller {msg.sender}: {reply.body}.")
    creds = reply.body[0]
    return Caller(sender=msg.sender, uid=int(creds["UnixUserID"].value),
                  pid=int(creds["ProcessID"].value) if "ProcessID" in creds else 0,
                  interactive=bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION))


class Authorizer(Protocol):
    async def require(self, action: str, caller: Caller, details: dict[str, str]) -> None:
        """Return if CALLER may do ACTION (on the overlay DETAILS name); raise AccessDenied
        or an InteractiveAuthorizationRequired AccessDenied otherwise."""


VERBS = {"create": "create overlays", "commit": "commit overlays",
         "discard": "discard overlays", "manage-others": "act on overlays of other users"}


class RootOnly:
    """The rule without polkit: root may do anything, nobody else may change anything."""

    async def require(self, action: str, caller: Caller, details: dict[str, str]) -> None:
        if caller.uid == 0:
            return
        verb = VERBS.get(action.removeprefix(ACTION_PREFIX), action)
        raise AccessDenied(f"Not authorized to {verb} ({action}): polkit is not available to "
                           f"decide, so only root may (the caller is uid {caller.uid}).")
