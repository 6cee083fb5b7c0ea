"""Who is calling, and may they do this? Asked after cheap validation, before any change.

``Caller`` is read from the bus daemon (GetConnectionCredentials of the sender), so it
cannot be forged by the client. ``Authorizer`` is the hook every state change goes
through; ``RootOnly`` is what overlayd does when polkit is not available (DESIGN.md):
root may, everyone else is refused with a message that says why.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from dbus_next import Message, MessageFlag, MessageType, Variant
from dbus_next.aio import MessageBus

from overlayd.bus.errors import AccessDenied, InteractiveAuthorizationRequired
from overlayd.bus.names import ACTION_PREFIX


@dataclass(frozen=True)
class Caller:
    sender: str
    uid: int
    pid: int
    interactive: bool  # the call carries ALLOW_INTERACTIVE_AUTHORIZATION


class CallerCache:
    """uid and pid of each unique bus name, asked of the bus daemon once.

    A unique name (":1.42") belongs to one connection for the bus's whole life and is never
    reused, so its credentials cannot change; the cache only needs a bound on its size.
    Saves a round trip through the bus daemon on every call after a client's first.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._known: OrderedDict[str, tuple[int, int]] = OrderedDict()

    async def identify(self, bus: MessageBus, msg: Message) -> Caller:
        sender = msg.sender
        known = self._known.get(sender)
        if known is None:
            known = await _credentials(bus, sender)
            self._known[sender] = known
            if len(self._known) > self.size:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(sender)
        uid, pid = known
        return Caller(sender=sender, uid=uid, pid=pid,
                      interactive=bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION))


async def _credentials(bus: MessageBus, sender: str) -> tuple[int, int]:
    reply = await bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="GetConnectionCredentials",
        signature="s", body=[sender]))
    if reply.message_type is MessageType.ERROR:
        raise AccessDenied(f"Cannot identify the caller {sender}: {reply.body}.")
    creds = reply.body[0]
    pid = int(creds["ProcessID"].value) if "ProcessID" in creds else 0
    return int(creds["UnixUserID"].value), pid


class Authorizer(Protocol):
    async def require(self, action: str, caller: Caller, details: dict[str, str]) -> None:
        """Return if CALLER may do ACTION (on the overlay DETAILS name); raise AccessDenied
        (or its subclass InteractiveAuthorizationRequired) otherwise."""


VERBS = {"create": "create overlays", "commit": "commit overlays",
         "discard": "discard overlays", "manage-others": "act on overlays of other users",
         "cancel-job": "cancel one's own jobs",
         "cancel-job-other-user": "cancel jobs of other users"}


class RootOnly:
    """The rule without polkit: root may do anything, nobody else may change anything.
    What PolkitAuthorizer does when polkitd is not running."""

    async def require(self, action: str, caller: Caller, details: dict[str, str]) -> None:
        if caller.uid == 0:
            return
        verb = VERBS.get(action.removeprefix(ACTION_PREFIX), action)
        raise AccessDenied(f"Not authorized to {verb} ({action}): polkit is not available to "
                           f"decide, so only root may (the caller is uid {caller.uid}).")


POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"
ALLOW_USER_INTERACTION = 0x1
# Error names that mean "polkitd is not running on this bus".
POLKIT_ABSENT = {"org.freedesktop.DBus.Error.ServiceUnknown",
                 "org.freedesktop.DBus.Error.NameHasNoOwner",
                 "org.freedesktop.DBus.Error.NoReply"}


# What an authentication agent shows (polkit.message); the policy file has the same
# sentences with $(overlay) and $(image) for agents that read them from there.
MESSAGES = {
    "create": 'Authentication is required to mount {image} read-only with its writes in RAM '
              'as overlay "{overlay}"',
    "commit": 'Authentication is required to write the changes of overlay "{overlay}" into '
              '{image}',
    "discard": 'Authentication is required to unmount overlay "{overlay}" at {mountpoint} and '
               'throw its writes away',
    "manage-others": 'Authentication is required to act on overlay "{overlay}", which another '
                     'user created',
    "cancel-job": 'Authentication is required to cancel the {operation} of overlay "{overlay}"',
    "cancel-job-other-user": 'Authentication is required to cancel the {operation} of overlay '
                             '"{overlay}", which another user started',
}


def polkit_details(action: str, details: dict[str, str]) -> dict[str, str]:
    """DETAILS plus polkit.message, the sentence an agent shows, with names filled in (a
    call that reuses an action for a narrower purpose, Reconfigure's create, gives its own)."""
    template = MESSAGES.get(action.removeprefix(ACTION_PREFIX))
    if template is None or "polkit.message" in details:
        return dict(details)
    fields = {"overlay": "", "image": "", "mountpoint": "", "operation": ""} | details
    return {**details, "polkit.message": template.format(**fields)}


class PolkitAuthorizer:
    """Ask polkitd (CheckAuthorization, subject system-bus-name) before every change.

    No decision is cached here: polkit's *_keep results do that. uid 0 is allowed without
    asking, as polkit itself always allows it. Without polkitd, the RootOnly rule applies
    and the refusal says that polkit is not available.
    """

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.fallback = RootOnly()

    async def require(self, action: str, caller: Caller, details: dict[str, str]) -> None:
        if caller.uid == 0:
            return
        subject = ["system-bus-name", {"name": Variant("s", caller.sender)}]
        flags = ALLOW_USER_INTERACTION if caller.interactive else 0
        reply = await self.bus.call(Message(
            destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_IFACE,
            member="CheckAuthorization", signature="(sa{sv})sa{ss}us",
            body=[subject, action, polkit_details(action, details), flags, ""]))
        verb = VERBS.get(action.removeprefix(ACTION_PREFIX), action)
        if reply.message_type is MessageType.ERROR:
            if reply.error_name in POLKIT_ABSENT:
                await self.fallback.require(action, caller, details)
                return
            raise AccessDenied(f"Cannot check whether uid {caller.uid} may {verb} ({action}): "
                               f"polkit answered {reply.error_name}.")
        is_authorized, is_challenge, answer = reply.body[0]
        if is_authorized:
            return
        if answer.get("polkit.dismissed") == "true":  # the person closed the agent's prompt
            raise AccessDenied(f"The authentication to {verb} ({action}) as uid {caller.uid} "
                               "was dismissed; nothing was done.")
        if is_challenge and caller.interactive:
            raise AccessDenied(f"Authentication is required to {verb} ({action}) as uid "
                               f"{caller.uid}, and no polkit authentication agent answered.")
        if is_challenge:
            raise InteractiveAuthorizationRequired(
                f"Authentication is required to {verb} ({action}) as uid {caller.uid}; the call "
                "did not allow interactive authorization (overlayctl asks unless "
                "--no-ask-password).")
        raise AccessDenied(f"Not authorized to {verb} ({action}) as uid {caller.uid}.")
