"""Put an OverlayManager on a bus: connect, export the objects, then own the name.

The name is requested last, so once it is owned the service is ready (what systemd's
Type=dbus waits for, and what --standalone announces).
"""

from __future__ import annotations

import asyncio

from dbus_next import Message, MessageType
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
                    auth: Authorizer | None = None, *, wait_for_polkit: bool = False
                    ) -> BusServer:
        """Serve on ADDRESS (None: the system bus). With WAIT_FOR_POLKIT, the name is not
        requested before polkitd is on the bus (for --standalone, which starts it)."""
        try:
            bus = await OverlaydBus(bus_address=address, bus_type=BusType.SYSTEM,
                                    negotiate_unix_fd=True).connect()
        except Exception as e:  # dbus-next raises several types for one cause
            raise OverlaydError(f"Cannot connect to the bus {address or '(system)'}: {e}.") \
                from None
        if wait_for_polkit:
            await _wait_for_name(bus, POLKIT_NAME)
        service = Service(bus, manager, auth or PolkitAuthorizer(bus))
        service.export_all()
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply is not RequestNameReply.PRIMARY_OWNER:
            bus.disconnect()
            raise OverlaydError(f"Another process owns {BUS_NAME} on this bus ({reply.name}).")
        return cls(bus, service)

    async def wait_disconnected(self) -> None:
        await self.bus.wait_for_disconnect()

    def stop(self) -> None:
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
