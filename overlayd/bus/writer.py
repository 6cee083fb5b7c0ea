"""The daemon's side of its bus socket, in place of dbus-next 0.2.3's ``_MessageWriter``.

dbus-next's writer sends until its queue is empty and takes EAGAIN from ``sock.send`` for a
lost connection: any burst bigger than the socket buffer (one client with ~120 calls in
flight and no interest in the replies, or ~200 InterfacesAdded) made the daemon drop its
own bus connection. This one stops at EAGAIN and goes on when the loop says the socket is
writable again.

It also bounds what waits here for one client, as dbus-daemon bounds its queues: a reply
to a client that already has ``limit`` bytes of replies waiting in this queue is dropped,
with a warning (once, until that client's backlog has cleared). The queue only grows while
dbus-daemon does not read from us, which it does when the messages we sent still wait in
the queues of clients that do not read theirs; so a client that floods us loses its own
replies, and the daemon's memory stays bounded. A reply bigger than the limit still goes
when nothing else waits for that client.
"""

from __future__ import annotations

import array
import asyncio
import logging
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any

from dbus_next import Message, MessageType

log = logging.getLogger("overlayd.bus")

REPLY_BACKLOG_LIMIT = 4 << 20  # bytes of replies that may wait here for one client


@dataclass
class _Out:
    data: bytes
    fds: list[int]
    future: asyncio.Future[None] | None
    client: str | None  # the unique name a reply goes to; None for calls and signals


class Writer:
    """What dbus-next's MessageBus expects of ``bus._writer``: ``schedule_write`` (and
    ``buffer_message``), writing in the background on the bus's event loop."""

    def __init__(self, bus: Any, limit: int = REPLY_BACKLOG_LIMIT) -> None:
        self.bus = bus
        self.loop: asyncio.AbstractEventLoop = bus._loop
        self.sock: socket.socket = bus._sock
        self.fd: int = bus._fd
        self.negotiate_unix_fd: bool = bus._negotiate_unix_fd
        self.limit = limit
        self.queue: deque[_Out] = deque()
        self.offset = 0  # bytes of queue[0] already sent
        self.backlog: dict[str, int] = {}  # bytes of replies queued, per client
        self.dropping: set[str] = set()  # clients whose replies are dropped (logged once)
        self.watching = False  # the loop calls write_callback when the socket is writable

    def buffer_message(self, msg: Message, future: asyncio.Future[None] | None = None) -> None:
        data = msg._marshall(negotiate_unix_fd=self.negotiate_unix_fd)
        client = None
        if msg.message_type in (MessageType.METHOD_RETURN, MessageType.ERROR):
            client = msg.destination
        if client is not None:
            waiting = self.backlog.get(client, 0)
            if waiting and waiting + len(data) > self.limit:
                self._drop(client, waiting, future)
                return
            self.backlog[client] = waiting + len(data)
        self.queue.append(_Out(data, list(msg.unix_fds or ()), future, client))

    def schedule_write(self, msg: Message | None = None,
                       future: asyncio.Future[None] | None = None) -> None:
        if self.bus._disconnected:
            if future is not None:
                future.cancel()  # nobody waits for it; an exception would be logged unread
            return
        if msg is not None:
            self.buffer_message(msg, future)
        # Nothing goes out before Hello is answered (dbus-next writes Hello itself); while
        # the loop watches the socket, it is full and write_callback comes by itself.
        if self.bus.unique_name and not self.watching:
            self.write_callback()

    def write_callback(self) -> None:
        try:
            while self.queue:
                out = self.queue[0]
                chunk = memoryview(out.data)[self.offset:]
                if out.fds and self.offset == 0 and self.negotiate_unix_fd:
                    fds = array.array("i", out.fds)
                    sent = self.sock.sendmsg([chunk], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                        fds)])
                else:
                    sent = self.sock.send(chunk)
                self.offset += sent
                if self.offset < len(out.data):
                    break  # the socket took only part of it: it is full
                self.queue.popleft()
                self.offset = 0
                self._sent(out)
        except (BlockingIOError, InterruptedError):
            pass  # full: go on when it is writable
        except Exception as e:  # the connection is gone
            self._fail(e)
            return
        self._watch(bool(self.queue))

    def _watch(self, on: bool) -> None:
        if on and not self.watching:
            self.loop.add_writer(self.fd, self.write_callback)
        elif not on and self.watching:
            self.loop.remove_writer(self.fd)
        self.watching = on

    def _sent(self, out: _Out) -> None:
        if out.client is not None:
            left = self.backlog[out.client] - len(out.data)
            if left:
                self.backlog[out.client] = left
            else:
                del self.backlog[out.client]
                self.dropping.discard(out.client)
        if out.future is not None and not out.future.done():
            out.future.set_result(None)

    def _drop(self, client: str, waiting: int, future: asyncio.Future[None] | None) -> None:
        if client not in self.dropping:
            self.dropping.add(client)
            log.warning("Dropping replies to %s: %d bytes of replies already wait to be sent "
                        "to it (the limit is %d); it sends calls faster than the bus takes "
                        "the replies.", client, waiting, self.limit)
        if future is not None:
            future.cancel()

    def _fail(self, e: Exception) -> None:
        for out in self.queue:
            if out.future is not None:
                out.future.cancel()
        self.queue.clear()
        self.backlog.clear()
        self.watching = False  # _finalize stops the loop watching the socket
        self.bus._finalize(e)
