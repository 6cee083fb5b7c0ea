"""A polkit authentication agent whose person always clicks Cancel.

What a graphical agent (polkit-gnome, gnome-shell) does when its dialog is dismissed: it
answers polkitd's BeginAuthentication with org.freedesktop.PolicyKit1.Error.Cancelled. This
one registers for one process (as pkttyagent --process does), prints BEGIN with the action
and the message for each request, and answers Cancelled. pkttyagent cannot do this (it
either checks a password or dies), so the dismissal of a prompt needs this stand-in for the
person; polkitd and its protocol are the real ones.

    /usr/bin/python3 cancel_agent.py PID       (as root, DBUS_SYSTEM_BUS_ADDRESS set)
"""

import sys

from gi.repository import Gio, GLib

XML = """<node><interface name="org.freedesktop.PolicyKit1.AuthenticationAgent">
 <method name="BeginAuthentication"><arg type="s" direction="in"/><arg type="s" direction="in"/>
  <arg type="s" direction="in"/><arg type="a{ss}" direction="in"/><arg type="s" direction="in"/>
  <arg type="a(sa{sv})" direction="in"/></method>
 <method name="CancelAuthentication"><arg type="s" direction="in"/></method>
</interface></node>"""
PATH = "/org/overlayd/test/CancelAgent"


def on_call(conn, sender, path, iface, method, params, inv):
    if method == "BeginAuthentication":
        action, message = params.unpack()[:2]
        print("BEGIN", action, message, flush=True)
        inv.return_dbus_error("org.freedesktop.PolicyKit1.Error.Cancelled",
                              "The person dismissed the authentication dialog")
    else:
        inv.return_value(None)


def start_time(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def main():
    pid = int(sys.argv[1])
    bus = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
    bus.register_object(PATH, Gio.DBusNodeInfo.new_for_xml(XML).interfaces[0], on_call,
                        None, None)
    subject = ("unix-process", {"pid": GLib.Variant("u", pid),
                                "start-time": GLib.Variant("t", start_time(pid))})
    bus.call_sync("org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority",
                  "org.freedesktop.PolicyKit1.Authority", "RegisterAuthenticationAgent",
                  GLib.Variant("((sa{sv})ss)", (subject, "C", PATH)), None,
                  Gio.DBusCallFlags.NONE, -1, None)
    print("REGISTERED", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
