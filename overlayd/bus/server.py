"""Put an OverlayManager on a bus: connect, export the objects, then own the name.

The name is requested last, so once it is owned the service is ready (what systemd's
Type=dbus waits for, and what --standalone announces). A start that fails after
connecting disconnects again, so nothing of it outlives the failure.
"""

from __future__ import annotations

import asyncio

from dbus_next import DBusError, Message, MessageType
from dbus_next.constants import BusType, NameFlag, RequestNameReply

from overlayd.bus.auth import POLKIT_NAME, Authorizer, PolkitAuthorizer
from overlayd.bus.connection import OverlaydBus
from overlayd.bus.names import BUS_NAME
from overlayd.bus.service import Service
from overlayd.errors import OverlaydError
from overlayd.manager import OverlayManager


class BusServer:
    def __init__(self, bus: OverlaydBus, service: Service) -> None:
        self.bus = bus
        self.service = service

    @classmethod
    async def start(cls, manager: OverlayManager, address: str | None,
                    auth: Authorizer | None = None, *, wait_for_polkit: bool = False,
                    polkit_timeout: float = 15.0) -> BusServer:
        """Serve on ADDRESS (None: the system bus). With WAIT_FOR_POLKIT, the name is not
        requested before polkitd is on the bus (for --standalone, which starts it)."""
        try:
            bus = await OverlaydBus(bus_address=address, bus_type=BusType.SYSTEM,
                                    negotiate_unix_fd=True).connect()
        except Exception as e:  # dbus-next raises several types for one cause
            raise OverlaydError(f"Cannot connect to the bus {address or '(system)'}: {e}.") \
                from None
        try:
            if wait_for_polkit:
                await _wait_for_name(bus, POLKIT_NAME, polkit_timeout)
            service = Service(bus, manager, auth or PolkitAuthorizer(bus))
            service.export_all()
            try:
                reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
            except DBusError as e:  # the bus policy does not let us own it
                raise OverlaydError(f"Cannot own {BUS_NAME} on this bus: {e.text}") from None
            if reply is not RequestNameReply.PRIMARY_OWNER:
                raise OverlaydError(f"Another process owns {BUS_NAME} on this bus "
                                    f"({reply.name}).")
        except BaseException:
            bus.disconnect()
            raise
        return cls(bus, service)

    async def wait_lost(self) -> str:
        """Wait until the connection to the bus is gone without our asking; say why."""
        try:
            await self.bus.wait_for_disconnect()
        except Exception as e:
            return str(e) or type(e).__name__
        return "the connection was closed"

    def stop(self) -> None:
        self.service.close()
        self.bus.disconnect()


async def _wait_for_name(bus: OverlaydBus, name: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        reply = await bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="NameHasOwner", signature="s",
            body=[name]))
        if reply.message_type is MessageType.METHOD_RETURN and reply.body[0]:
            return
        await asyncio.sleep(0.05)
    raise OverlaydError(f"{name} did not appear on the bus within {timeout:.0f} s.")
