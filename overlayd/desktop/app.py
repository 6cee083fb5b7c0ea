"""The Overlays window: every overlay of overlayd, live from its D-Bus signals.

Only Gio's D-Bus API: a DBusObjectManagerClient on /org/overlayd/Overlayd1 gives the overlay
and job objects (added, changed, removed by signals: no polling, except the used bytes of
RAM, which the daemon never announces and which are read again every few seconds), and a
proxy of the Manager gives RootOverlay. Every call that changes something carries
ALLOW_INTERACTIVE_AUTHORIZATION, so that the desktop's polkit agent may ask for a password.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import gi

gi.require_version("Gtk", "4.0")
gi.require_version("Adw", "1")
from gi.repository import Adw, Gio, GLib, Gtk  # noqa: E402

from overlayd.desktop import text  # noqa: E402

APP_ID = "org.overlayd.Overlays"
BUS_NAME = "org.overlayd.Overlayd1"
ROOT_PATH = "/org/overlayd/Overlayd1"
MANAGER = "org.overlayd.Overlayd1.Manager"
OVERLAY = "org.overlayd.Overlayd1.Overlay"
JOB = "org.overlayd.Overlayd1.Job"
INTERACTIVE = Gio.DBusCallFlags.ALLOW_INTERACTIVE_AUTHORIZATION
NO_TIMEOUT = GLib.MAXINT  # a password prompt may take a while
USED_EVERY_S = 5

CSS = """
levelbar.usage-ok block.filled { background-color: @accent_bg_color; }
levelbar.usage-high block.filled { background-color: @warning_bg_color; }
levelbar.usage-critical block.filled { background-color: @error_bg_color; }
levelbar.usage-full block.filled { background-color: @error_bg_color; }
.error-box { background-color: alpha(@error_bg_color, 0.15); padding: 6px 12px; }
.root-banner { background-color: alpha(@accent_bg_color, 0.15); padding: 6px 12px; }
"""


def log(*words: object) -> None:
    """One line on stdout per event: what the tests read besides AT-SPI."""
    print(*words, flush=True)


def prop(proxy: Gio.DBusProxy, name: str, default: Any = None) -> Any:
    v = proxy.get_cached_property(name)
    return default if v is None else v.unpack()


def error_words(err: GLib.Error) -> str:
    return text.error_text(err.message)


class OverlayRow(Adw.ActionRow):  # type: ignore[misc]
    """One overlay: name, image, mount point, state, RAM bar, free space; its actions; the
    progress of its job when one runs."""

    def __init__(self, win: Window, proxy: Gio.DBusProxy) -> None:
        super().__init__()
        self.win, self.proxy = win, proxy
        self.name: str = prop(proxy, "Name", "")
        self.used = 0
        self.image_free: int | None = prop(proxy, "ImageFree", None)  # None: an old daemon
        self.image_size: int | None = prop(proxy, "ImageSize", None)  # 0: not known now
        self.usage = prop(proxy, "UpperUsage", "ok")
        self.job: Gio.DBusProxy | None = None
        self.set_title(self.name)
        self.set_subtitle_lines(2)

        self.job_box = Gtk.Box(spacing=6, valign=Gtk.Align.CENTER, visible=False)
        self.progress = Gtk.ProgressBar(show_text=True, width_request=220,
                                        valign=Gtk.Align.CENTER)
        self.cancel = Gtk.Button(label="Cancel", valign=Gtk.Align.CENTER)
        self.cancel.connect("clicked", self.on_cancel)
        self.job_box.append(self.progress)
        self.job_box.append(self.cancel)
        self.add_suffix(self.job_box)

        ram = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, valign=Gtk.Align.CENTER, spacing=2)
        self.bar = Gtk.LevelBar(width_request=140, min_value=0, max_value=1)
        for offset in ("low", "high", "full"):  # colours come from UpperUsage, not from here
            self.bar.remove_offset_value(offset)
        self.ram_label = Gtk.Label(css_classes=["caption"], xalign=0)
        ram.append(self.bar)
        ram.append(self.ram_label)
        self.add_suffix(ram)

        self.buttons: dict[str, Gtk.Button] = {}
        for label, handler in (("Commit", self.on_commit), ("Discard", self.on_discard),
                               ("Changes", self.on_changes), ("Open", self.on_open)):
            b = Gtk.Button(label=label, valign=Gtk.Align.CENTER)
            if label == "Discard":
                b.add_css_class("destructive-action")
            b.connect("clicked", handler)
            self.buttons[label] = b
            self.add_suffix(b)
        proxy.connect("g-properties-changed", self.on_changed)
        self.refresh()
        self.read_used()

    # -- what it shows ------------------------------------------------------------------

    def refresh(self) -> None:
        p = self.proxy
        state = prop(p, "State", "")
        image, mnt = prop(p, "Image", ""), prop(p, "MountPoint", "")
        words = [state]
        if prop(p, "HalfCommitted", False):
            words.append("half committed: commit again to finish")
        if prop(p, "CommitAtShutdown", False):
            words.append("commits at shutdown")
        usage_words = text.USAGE_WORDS.get(self.usage, "")
        if usage_words:
            words.append(usage_words)
        last = prop(p, "LastError", "")
        if last:
            words.append(f"last error: {last}")
        free = text.image_free_text(prop(p, "FsType", ""), self.image_free, self.used,
                                    self.image_size)
        self.set_subtitle(f"{image} → {mnt}\n{' · '.join(words + ([free] if free else []))}")
        size = prop(p, "UpperSize", 0)
        self.bar.set_value(min(1.0, self.used / size) if size else 0)
        for level in text.USAGE_LEVELS:
            self.bar.remove_css_class(f"usage-{level}")
        self.bar.add_css_class(text.usage_level(self.usage))
        self.ram_label.set_label(text.ram_text(self.used, size))
        busy = state in ("committing", "discarding") or self.job is not None
        for label in ("Commit", "Discard"):
            self.buttons[label].set_sensitive(not busy)
        log("ROW", self.name, state, self.usage, self.used)

    def on_changed(self, proxy: Gio.DBusProxy, changed: GLib.Variant, _inv: list[str]) -> None:
        values = changed.unpack()
        if "UpperUsage" in values:
            old, self.usage = self.usage, values["UpperUsage"]
            self.read_used()
            if text.USAGE_LEVELS.index(self.usage) > text.USAGE_LEVELS.index(old) and \
                    self.usage != "ok":
                self.win.notify_usage(self.name, self.usage)
        if "CommitAtShutdown" in values and self.proxy.get_object_path() == self.win.root_row:
            self.win.show_root()
        self.refresh()

    def read_used(self) -> None:
        """UpperUsed, ImageFree and ImageSize are read live and never announced: ask for
        them."""
        def done(conn: Gio.DBusConnection, res: Gio.AsyncResult, name: str) -> None:
            try:
                (value,) = conn.call_finish(res).unpack()
            except GLib.Error:
                return
            if name == "UpperUsed":
                self.used = int(value)
            elif name == "ImageFree":
                self.image_free = int(value)
            else:
                self.image_size = int(value)
            self.refresh()
        for name in ("UpperUsed", "ImageFree", "ImageSize"):
            self.proxy.get_connection().call(
                BUS_NAME, self.proxy.get_object_path(), "org.freedesktop.DBus.Properties",
                "Get", GLib.Variant("(ss)", (OVERLAY, name)), GLib.VariantType("(v)"),
                Gio.DBusCallFlags.NONE, -1, None, done, name)

    # -- jobs -----------------------------------------------------------------------------

    def track(self, job: Gio.DBusProxy) -> None:
        self.job = job
        job.connect("g-properties-changed", lambda *_: self.show_job())
        job.connect("g-signal", self.on_job_signal)
        self.job_box.set_visible(True)
        self.show_job()
        self.read_used()  # what the commit is about to write

    def show_job(self) -> None:
        job = self.job
        if job is None:
            return
        valid, progress = prop(job, "ProgressValid", False), prop(job, "Progress", 0.0)
        self.progress.set_fraction(progress if valid else 0.0)
        self.progress.set_text(text.job_text(valid, progress, prop(job, "Rate", 0),
                                             prop(job, "ExpectedEndTime", 0),
                                             int(time.time() * 1e6)))
        self.cancel.set_sensitive(bool(prop(job, "Cancelable", False)))
        log("JOB", self.name, f"{progress:.3f}" if valid else "waiting")

    def on_job_signal(self, job: Gio.DBusProxy, _sender: str, signal: str,
                      params: GLib.Variant) -> None:
        if signal != "Completed":
            return
        ok, message = params.unpack()
        log("COMPLETED", self.name, ok, message)
        if ok:
            self.win.toast(f"{self.name}: {message}" if message else f"{self.name} committed")
        else:
            self.win.show_error(f"Commit of {self.name}: {message}")

    def untrack(self, job_path: str) -> None:
        if self.job is not None and self.job.get_object_path() == job_path:
            self.job = None
            self.job_box.set_visible(False)
            self.read_used()
            self.refresh()

    # -- actions --------------------------------------------------------------------------

    def call(self, method: str, params: GLib.Variant | None, what: str,
             then: Any = None, failed: Any = None) -> None:
        def done(proxy: Gio.DBusProxy, res: Gio.AsyncResult) -> None:
            try:
                result = proxy.call_finish(res)
            except GLib.Error as e:
                log("ERROR", what, self.name, e.message)
                self.win.show_error(f"{what} {self.name}: {error_words(e)}")
                if failed is not None:
                    failed()
                return
            log("OK", what, self.name)
            if then is not None:
                then(result)
        self.proxy.call(method, params, INTERACTIVE, NO_TIMEOUT, None, done)

    def on_commit(self, _b: Gtk.Button | None = None) -> None:
        # StartCommit: the job shows up through the ObjectManager; errors before it here
        self.call("StartCommit", GLib.Variant("(a{sv})", ({},)), "Could not commit")

    def on_cancel(self, _b: Gtk.Button | None = None) -> None:
        job = self.job
        if job is None:
            return

        def done(proxy: Gio.DBusProxy, res: Gio.AsyncResult) -> None:
            try:
                proxy.call_finish(res)
                log("OK", "cancel", self.name)
            except GLib.Error as e:
                self.win.show_error(f"Could not cancel the commit of {self.name}: "
                                    f"{error_words(e)}")
        job.call("Cancel", GLib.Variant("(a{sv})", ({},)), INTERACTIVE, NO_TIMEOUT, None, done)

    def on_discard(self, _b: Gtk.Button | None = None) -> None:
        def ask(result: GLib.Variant) -> None:
            (changes,) = result.unpack()
            d = Adw.MessageDialog(transient_for=self.win, modal=True,
                                  heading=f"Discard {self.name}?",
                                  body=text.discard_body(self.name, len(changes)))
            d.add_response("cancel", "Keep")
            d.add_response("discard", f"Discard {text.changes_text(len(changes))}")
            d.set_response_appearance("discard", Adw.ResponseAppearance.DESTRUCTIVE)
            d.set_default_response("cancel")
            d.set_close_response("cancel")
            d.connect("response", self.on_discard_response)
            log("ASK", "discard", self.name, len(changes))
            d.present()
        self.call("Diff", None, "Could not read the changes of", ask)

    def on_discard_response(self, _d: Adw.MessageDialog, response: str) -> None:
        if response == "discard":
            self.call("Discard", GLib.Variant("(a{sv})", ({},)), "Could not discard")

    def on_changes(self, _b: Gtk.Button | None = None) -> None:
        def show(result: GLib.Variant) -> None:
            (changes,) = result.unpack()
            ChangesWindow(self.win, self.name, changes).present()
        self.call("Diff", None, "Could not read the changes of", show)

    def on_open(self, _b: Gtk.Button | None = None) -> None:
        uri = Gio.File.new_for_path(prop(self.proxy, "MountPoint", "/")).get_uri()

        def done(_win: Gtk.Window, res: Gio.AsyncResult) -> None:
            try:
                Gtk.show_uri_full_finish(self.win, res)
            except GLib.Error as e:
                log("ERROR", "open", self.name, e.message)
                self.win.show_error(f"Could not open {uri}: {e.message}")
                return
            log("OK", "open", self.name, uri)
        # the desktop's file manager for inode/directory (through the portal when sandboxed)
        Gtk.show_uri_full(self.win, uri, 0, None, done)


class ChangesWindow(Adw.Window):  # type: ignore[misc]
    """The Diff of one overlay, as a list."""

    def __init__(self, parent: Window, name: str, changes: list[tuple[str, str]]) -> None:
        super().__init__(transient_for=parent, modal=True, default_width=560,
                         default_height=420, title=f"Changes in {name}")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL)
        header = Adw.HeaderBar()
        header.set_title_widget(Adw.WindowTitle(title=f"Changes in {name}",
                                                subtitle=text.changes_text(len(changes))))
        box.append(header)
        listbox = Gtk.ListBox(selection_mode=Gtk.SelectionMode.NONE, css_classes=["boxed-list"],
                              margin_top=12, margin_bottom=12, margin_start=12, margin_end=12)
        for path, kind in sorted(changes):
            listbox.append(Adw.ActionRow(title=path, subtitle=kind))
        if not changes:
            listbox.append(Adw.ActionRow(title="No change"))
        box.append(Gtk.ScrolledWindow(child=listbox, vexpand=True))
        self.set_content(box)
        log("CHANGES", name, len(changes))


class Window(Adw.ApplicationWindow):  # type: ignore[misc]
    def __init__(self, app: App) -> None:
        super().__init__(application=app, title="Overlays", default_width=1180,
                         default_height=520)
        self.app = app
        self.rows: dict[str, OverlayRow] = {}
        self.jobs: dict[str, Gio.DBusProxy] = {}
        self.om: Gio.DBusObjectManagerClient | None = None
        self.manager: Gio.DBusProxy | None = None
        self.root_row: str = "/"

        self.toasts = Adw.ToastOverlay()
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL)
        header = Adw.HeaderBar()
        new = Gtk.Button(label="New overlay")
        new.add_css_class("suggested-action")
        new.connect("clicked", self.on_new)
        header.pack_start(new)
        box.append(header)

        self.banner = Gtk.Box(spacing=12, visible=False, css_classes=["root-banner"])
        self.banner.append(Gtk.Label(
            label="This system runs on an overlay: changes to / are kept in RAM and lost at "
                  "reboot unless committed.", hexpand=True, xalign=0, wrap=True))
        self.banner.append(Gtk.Label(label="Commit at shutdown"))
        self.shutdown_switch = Gtk.Switch(valign=Gtk.Align.CENTER)
        # the label beside it does not name it for a screen reader: say it
        self.shutdown_switch.update_property([Gtk.AccessibleProperty.LABEL],
                                             ["Commit at shutdown"])
        self.shutdown_handler = self.shutdown_switch.connect("state-set", self.on_shutdown)
        self.banner.append(self.shutdown_switch)
        box.append(self.banner)

        self.error_box = Gtk.Box(spacing=12, visible=False, css_classes=["error-box"])
        self.error_label = Gtk.Label(hexpand=True, xalign=0, wrap=True, selectable=True)
        close = Gtk.Button(label="Dismiss", valign=Gtk.Align.CENTER)
        close.connect("clicked", lambda *_: self.error_box.set_visible(False))
        self.error_box.append(self.error_label)
        self.error_box.append(close)
        box.append(self.error_box)

        self.list = Gtk.ListBox(selection_mode=Gtk.SelectionMode.NONE, css_classes=["boxed-list"],
                                margin_top=12, margin_start=12, margin_end=12, margin_bottom=12,
                                valign=Gtk.Align.START)
        self.scroll = Gtk.ScrolledWindow(child=self.list, vexpand=True)
        self.status = Adw.StatusPage(title="Connecting to overlayd…", vexpand=True,
                                     icon_name="drive-harddisk-symbolic")
        box.append(self.scroll)
        box.append(self.status)
        self.toasts.set_child(box)
        self.set_content(self.toasts)
        self.sync()

        # bus, flags, name, path, get_proxy_type_func, its user_data, cancellable, callback
        Gio.DBusObjectManagerClient.new_for_bus(
            Gio.BusType.SYSTEM, Gio.DBusObjectManagerClientFlags.DO_NOT_AUTO_START, BUS_NAME,
            ROOT_PATH, None, None, None, self.on_manager)
        Gio.DBusProxy.new_for_bus(
            Gio.BusType.SYSTEM, Gio.DBusProxyFlags.DO_NOT_AUTO_START, None, BUS_NAME, ROOT_PATH,
            MANAGER, None, self.on_manager_proxy)
        GLib.timeout_add_seconds(USED_EVERY_S, self.tick)

    # -- the connection -------------------------------------------------------------------

    def on_manager(self, _src: object, res: Gio.AsyncResult) -> None:
        try:
            self.om = Gio.DBusObjectManagerClient.new_for_bus_finish(res)
        except GLib.Error as e:
            self.status.set_title("Cannot reach the system bus")
            self.status.set_description(error_words(e))
            return
        self.om.connect("object-added", lambda _m, o: self.add(o))
        self.om.connect("object-removed", lambda _m, o: self.remove(o))
        self.om.connect("interface-added", lambda _m, o, _i: self.add(o))
        self.om.connect("notify::name-owner", lambda *_: self.on_owner())
        for obj in self.om.get_objects():
            self.add(obj)
        self.on_owner()

    def on_manager_proxy(self, _src: object, res: Gio.AsyncResult) -> None:
        try:
            self.manager = Gio.DBusProxy.new_for_bus_finish(res)
        except GLib.Error:
            return
        self.manager.connect("notify::g-name-owner", lambda *_: self.show_root())
        self.manager.connect("g-properties-changed", lambda *_: self.show_root())
        self.show_root()

    def on_owner(self) -> None:
        owner = self.om.get_name_owner() if self.om is not None else None
        log("OWNER", owner or "-")
        if owner is None:  # the daemon stopped: its objects went with it
            for path in list(self.rows):
                self.drop_row(path)
            self.jobs.clear()
        self.sync()

    def sync(self) -> None:
        running = self.om is not None and self.om.get_name_owner() is not None
        self.scroll.set_visible(bool(self.rows))
        self.status.set_visible(not self.rows)
        if self.om is None:
            return
        if running:
            self.status.set_title("No overlay")
            self.status.set_description("New overlay mounts a disk image read-only, with "
                                        "every write kept in RAM until you commit or "
                                        "discard it.")
        else:
            self.status.set_title("overlayd is not running")
            self.status.set_description("The list fills again when it starts.")
        log("OBJECTS", len(self.rows), " ".join(sorted(r.name for r in self.rows.values())))

    def add(self, obj: Gio.DBusObject) -> None:
        path = obj.get_object_path()
        overlay = obj.get_interface(OVERLAY)
        if overlay is not None and path not in self.rows:
            row = OverlayRow(self, overlay)
            self.rows[path] = row
            # sorted by name, like ListOverlays
            names = sorted([r.name for r in self.rows.values()])
            self.list.insert(row, names.index(row.name))
            for job in self.jobs.values():
                if path in prop(job, "Objects", []):
                    row.track(job)
            if path == self.root_row:
                self.show_root()
            self.sync()
        job = obj.get_interface(JOB)
        if job is not None and path not in self.jobs:
            self.jobs[path] = job
            for target in prop(job, "Objects", []):
                if target in self.rows:
                    self.rows[target].track(job)

    def remove(self, obj: Gio.DBusObject) -> None:
        path = obj.get_object_path()
        if path in self.jobs:
            self.jobs.pop(path)
            for row in self.rows.values():
                row.untrack(path)
        if path in self.rows:
            self.drop_row(path)
            self.sync()

    def drop_row(self, path: str) -> None:
        row = self.rows.pop(path)
        self.list.remove(row)

    def tick(self) -> bool:
        for row in self.rows.values():
            row.read_used()
        return True

    # -- the root banner ------------------------------------------------------------------

    def show_root(self) -> None:
        root = prop(self.manager, "RootOverlay", "/") if self.manager is not None else "/"
        self.root_row = root
        row = self.rows.get(root)
        self.banner.set_visible(root != "/")
        if row is not None:
            on = prop(row.proxy, "CommitAtShutdown", False)
            self.shutdown_switch.handler_block(self.shutdown_handler)
            self.shutdown_switch.set_active(on)
            self.shutdown_switch.handler_unblock(self.shutdown_handler)
            log("ROOT", root, "commit-at-shutdown" if on else "no-commit")
        else:
            log("ROOT", root)

    def on_shutdown(self, switch: Gtk.Switch, on: bool) -> bool:
        row = self.rows.get(self.root_row)
        if row is None:
            return True
        # Commit with at_shutdown asks for it; Discard with at_shutdown takes it back
        opts = GLib.Variant("(a{sv})", ({"at_shutdown": GLib.Variant("b", True)},))
        # refused: the switch goes back to what the daemon says
        if on:
            row.call("Commit", opts, "Could not ask for a commit at shutdown of",
                     lambda _r: switch.set_state(True), self.show_root)
        else:
            row.call("Discard", opts, "Could not cancel the commit at shutdown of",
                     lambda _r: switch.set_state(False), self.show_root)
        return True  # the state follows the daemon's answer

    # -- new overlay ----------------------------------------------------------------------

    def on_new(self, _b: Gtk.Button | None = None) -> None:
        chooser = Gtk.FileChooserNative(title="Choose a disk image", transient_for=self,
                                        action=Gtk.FileChooserAction.OPEN,
                                        accept_label="Choose")
        chooser.connect("response", self.on_chosen)
        self.chooser = chooser  # keep it alive while it shows
        chooser.show()

    def on_chosen(self, chooser: Gtk.FileChooserNative, response: int) -> None:
        f = chooser.get_file() if response == Gtk.ResponseType.ACCEPT else None
        if f is None or f.get_path() is None:
            return
        path = f.get_path()
        d = Adw.MessageDialog(transient_for=self, modal=True, heading="New overlay",
                              body=f"Mount {path} read-only, with its writes in RAM, as:")
        entry = Gtk.Entry(text=text.safe_name(os.path.splitext(os.path.basename(path))[0]),
                          activates_default=True)
        d.set_extra_child(entry)
        d.add_response("cancel", "Cancel")
        d.add_response("create", "Create")
        d.set_response_appearance("create", Adw.ResponseAppearance.SUGGESTED)
        d.set_default_response("create")
        d.connect("response", lambda _d, r: self.create(path, entry.get_text())
                  if r == "create" else None)
        d.present()

    def create(self, path: str, name: str) -> None:
        """Open the image as the user (the daemon reads only what the user could) and pass
        the descriptor as image_fd."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self.show_error(f"Could not open {path}: {e.strerror}")
            return
        fds = Gio.UnixFDList.new_from_array([fd])  # takes the descriptor
        spec = {"image_fd": GLib.Variant("h", 0)}
        conn = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)

        def done(c: Gio.DBusConnection, res: Gio.AsyncResult) -> None:
            try:
                c.call_with_unix_fd_list_finish(res)
            except GLib.Error as e:
                log("ERROR", "create", name, e.message)
                self.show_error(f"Could not create {name}: {error_words(e)}")
                return
            log("OK", "create", name)
        conn.call_with_unix_fd_list(
            BUS_NAME, ROOT_PATH, MANAGER, "Create", GLib.Variant("(sa{sv})", (name, spec)),
            GLib.VariantType("(o)"), INTERACTIVE, NO_TIMEOUT, fds, None, done)

    # -- words ----------------------------------------------------------------------------

    def show_error(self, words: str) -> None:
        log("SHOWN", words)
        self.error_label.set_label(words)
        self.error_box.set_visible(True)

    def toast(self, words: str) -> None:
        self.toasts.add_toast(Adw.Toast(title=GLib.markup_escape_text(words)))

    def notify_usage(self, name: str, usage: str) -> None:
        n = Gio.Notification.new(f"Overlay {name}: {text.USAGE_WORDS[usage]}")
        n.set_body("Commit or discard its changes before it fills up."
                   if usage != "full" else "Commit or discard its changes: writes fail now.")
        n.set_priority(Gio.NotificationPriority.URGENT if usage in ("critical", "full")
                       else Gio.NotificationPriority.HIGH)
        self.app.send_notification(f"usage-{name}", n)
        log("NOTIFY", name, usage)


class App(Adw.Application):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(application_id=APP_ID, flags=Gio.ApplicationFlags.DEFAULT_FLAGS)
        self.win: Window | None = None
        # app.create(PATH, NAME): New overlay after the file chooser, for scripts and tests
        act = Gio.SimpleAction.new("create", GLib.VariantType("(ss)"))
        act.connect("activate", self.on_create)
        self.add_action(act)

    def on_create(self, _action: Gio.SimpleAction, param: GLib.Variant) -> None:
        if self.win is not None:
            self.win.create(*param.unpack())

    def do_startup(self) -> None:
        Adw.Application.do_startup(self)
        css = Gtk.CssProvider()
        css.load_from_data(CSS.encode())
        from gi.repository import Gdk
        Gtk.StyleContext.add_provider_for_display(Gdk.Display.get_default(), css,
                                                  Gtk.STYLE_PROVIDER_PRIORITY_APPLICATION)

    def do_activate(self) -> None:
        if self.win is None:
            self.win = Window(self)
        self.win.present()


def main(argv: list[str]) -> int:
    GLib.set_prgname("overlayd-gtk")
    GLib.set_application_name("Overlays")
    return int(App().run(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
