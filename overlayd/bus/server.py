"""Put an OverlayManager on a bus: connect, export the objects, then own the name.

The name is requested last, so once it is owned the service is ready (what systemd's
Type=dbus waits for, and what --standalone announces).
"""

from __future__ import annotations

from dbus_next.constants import BusType, NameFlag, RequestNameReply

from overlayd.bus.auth import Authorizer, RootOnly
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
                    auth: Authorizer | None = None) -> BusServer:
        """Serve on ADDRESS (None: the system bus)."""
        try:
            bus = await OverlaydBus(bus_address=address, bus_type=BusType.SYSTEM,
                                    negotiate_unix_fd=True).connect()
        except Exception as e:  # dbus-next raises several types for one cause
            raise OverlaydError(f"Cannot connect to the bus {address or '(system)'}: {e}.") \
                from None
        service = Service(bus, manager, auth or RootOnly())
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
