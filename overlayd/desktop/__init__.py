"""Overlays, the desktop client (GTK 4 + libadwaita): a true client of overlayd.

It talks to the daemon only over the system bus with Gio (``app.py``) and imports nothing
of the daemon's own modules (an import-linter contract says so), so it runs with Debian's
/usr/bin/python3 and its PyGObject, without the daemon's dependencies. ``text.py`` holds
what it shows in words, pure and testable without GTK.
"""
