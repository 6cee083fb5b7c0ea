"""A stand-in for the desktop's notification server (org.freedesktop.Notifications) on the
app's session bus: it prints "NOTIFY summary | body" per Notify call and ends with its bus.
Runs with Debian's python3 (python3-gi), inside the test's dbus-run-session."""

import sys

from gi.repository import Gio, GLib

XML = """<node><interface name="org.freedesktop.Notifications">
 <method name="Notify"><arg type="s" direction="in"/><arg type="u" direction="in"/>
  <arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="s" direction="in"/>
  <arg type="as" direction="in"/><arg type="a{sv}" direction="in"/><arg type="i" direction="in"/>
  <arg type="u" direction="out"/></method>
 <method name="CloseNotification"><arg type="u" direction="in"/></method>
 <method name="GetCapabilities"><arg type="as" direction="out"/></method>
 <method name="GetServerInformation"><arg type="s" direction="out"/><arg type="s" direction="out"/>
  <arg type="s" direction="out"/><arg type="s" direction="out"/></method>
 <signal name="NotificationClosed"><arg type="u"/><arg type="u"/></signal>
 <signal name="ActionInvoked"><arg type="u"/><arg type="s"/></signal>
</interface></node>"""
IFACE = Gio.DBusNodeInfo.new_for_xml(XML).interfaces[0]
count = 0


def on_call(conn, sender, path, iface, method, params, inv):
    global count
    if method == "Notify":
        count += 1
        args = params.unpack()
        print("NOTIFY", args[3], "|", args[4], flush=True)
        inv.return_value(GLib.Variant("(u)", (count,)))
    elif method == "GetCapabilities":
        inv.return_value(GLib.Variant("(as)", (["body"],)))
    elif method == "GetServerInformation":
        inv.return_value(GLib.Variant("(ssss)", ("test", "overlayd", "1", "1.2")))
    else:
        inv.return_value(None)


def on_bus(conn, name):
    conn.register_object("/org/freedesktop/Notifications", IFACE, on_call, None, None)


Gio.bus_own_name(Gio.BusType.SESSION, "org.freedesktop.Notifications",
                 Gio.BusNameOwnerFlags.NONE, on_bus,
                 lambda c, n: print("READY", flush=True),
                 lambda c, n: sys.exit(0))
GLib.MainLoop().run()
