"""A hostile bus client, run as a separate process (by the tests, as uid 65534).

    python flood.py ADDRESS COUNT [PATH [MEMBER]]

Connects with a raw socket, sends COUNT method calls to org.overlayd.Overlayd1 in one burst
(Introspect of PATH by default) and never reads a reply: dbus-daemon queues the replies
for it, and overlayd has to cope. Prints "sent" once the burst is out, then holds the
connection open until its stdin closes, so the test decides how long the pressure lasts.
A raw socket and not a bus library, because any library reads what arrives.
"""

from __future__ import annotations

import os
import socket
import sys

from dbus_next import Message


def connect(address: str) -> socket.socket:
    path = address.removeprefix("unix:path=").split(",", 1)[0]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    uid = str(os.getuid()).encode().hex().encode()
    sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\n")
    answer = b""
    while not answer.endswith(b"\r\n"):
        answer += sock.recv(1)
    if not answer.startswith(b"OK"):
        raise SystemExit(f"authentication refused: {answer!r}")
    sock.sendall(b"BEGIN\r\n")
    return sock


def main() -> None:
    address, count = sys.argv[1], int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else "/org/overlayd/Overlayd1"
    member = sys.argv[4] if len(sys.argv) > 4 else "Introspect"
    interface = {"Introspect": "org.freedesktop.DBus.Introspectable",
                 "ListOverlays": "org.overlayd.Overlayd1.Manager",
                 "GetManagedObjects": "org.freedesktop.DBus.ObjectManager"}[member]
    sock = connect(address)
    hello = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="Hello", serial=1)
    burst = [hello._marshall()]
    for serial in range(2, count + 2):
        burst.append(Message(destination="org.overlayd.Overlayd1", path=path,
                             interface=interface, member=member, serial=serial)._marshall())
    sock.sendall(b"".join(burst))
    print("sent", flush=True)
    sys.stdin.read()  # hold the connection, unread, until the test lets go
    sock.close()


if __name__ == "__main__":
    main()
