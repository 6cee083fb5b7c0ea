"""overlayd, the daemon: wiring and lifetime.

load config -> recover (adopt what a previous daemon left) -> connect to the bus ->
export the objects -> request the name last (so "name owned" means ready) -> serve until
SIGTERM. Stopping never touches live overlays; ``--standalone --discard-on-exit`` does.
SIGHUP (``systemctl reload overlayd``) re-reads the configuration; a bad one is logged and
the one in use stays.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from overlayd import __version__, overlayfile
from overlayd.bus.names import BUS_NAME
from overlayd.bus.server import BusServer
from overlayd.config import DEFAULT_CONFIG, differences, load_config, reloaded
from overlayd.errors import OverlaydError
from overlayd.events import Event
from overlayd.host.linux import LinuxHost
from overlayd.host.rootfs import RootFs
from overlayd.log import setup_logging
from overlayd.manager import OverlayManager
from overlayd.model import OverlaySpec
from overlayd.sdnotify import Notifier
from overlayd.standalone import StandaloneBus

log = logging.getLogger("overlayd")


def parser() -> argparse.ArgumentParser:
    """overlayd's options (also the source of overlayd(8), tools/manpages.py)."""
    p = argparse.ArgumentParser(prog="overlayd", description=(
        "Serve org.overlayd.Overlayd1: read-only images with their writes in RAM, "
        "committed or discarded on request. SIGTERM stops it (the overlays stay mounted); "
        "SIGHUP (systemctl reload overlayd) re-reads the configuration."))
    p.add_argument("--standalone", action="store_true",
                   help="start a private system-like bus (for machines without one) and print "
                        "DBUS_SYSTEM_BUS_ADDRESS=... on stdout once ready")
    p.add_argument("--discard-on-exit", action="store_true",
                   help="with --standalone: discard every overlay when stopping")
    p.add_argument("--polkit-rules", type=Path, metavar="DIR",
                   help="with --standalone: the rules.d directory its polkitd reads instead of "
                        "/etc/polkit-1/rules.d")
    p.add_argument("--bus-address", help="serve on this bus instead of the system bus")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help=f"configuration file (default {DEFAULT_CONFIG}, plus its .d/ drop-ins)")
    p.add_argument("--runtime-dir", type=Path,
                   help="state and layers (default from the configuration: /run/overlayd)")
    p.add_argument("--debug", action="store_true", help="log debug messages")
    p.add_argument("--version", action="version", version=f"overlayd {__version__}")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if (args.discard_on_exit or args.polkit_rules) and not args.standalone:
        p.error("--discard-on-exit and --polkit-rules only go with --standalone")
    if args.polkit_rules is not None and not args.polkit_rules.is_dir():
        p.error(f"--polkit-rules: '{args.polkit_rules}' is not a directory")
    return args


async def serve(args: argparse.Namespace) -> int:
    # First of all, so that a SIGTERM at any point, the moment after the ready line
    # included, stops the daemon cleanly instead of killing it.
    stop = stop_on_signals()
    hup = reload_on_signal()  # from the start too: a SIGHUP must never kill the daemon
    config = load_config(args.config, **config_overrides(args))
    # The root file system on an overlay is the system's daemon's to adopt (the one with
    # the default runtime directory), not a test's or a second daemon's.
    default_runtime = type(config).model_fields["runtime_dir"].default
    root = RootFs() if config.runtime_dir == default_runtime else None
    manager = OverlayManager(config, LinuxHost(), root=root)
    await manager.start(boot_overlays())
    # From here the state follows the mount table: an overlay unmounted from outside is
    # "unmounted", a boot overlay whose mount units come up later is adopted at once.
    manager.watch_mounts()
    await manager.check_mounts()

    lost: str | None = None
    standalone = await StandaloneBus.start() if args.standalone else None
    try:
        address = standalone.address if standalone else args.bus_address
        polkit = (await standalone.start_polkitd(args.polkit_rules, config.runtime_dir)
                  if standalone else False)
        server = await BusServer.start(manager, address, wait_for_polkit=polkit)
        notifier = Notifier()
        watchdog = asyncio.ensure_future(notifier.watchdog())
        try:
            log.info("Serving %s with %d overlays.", BUS_NAME, len(manager.list()),
                     extra={"OVERLAYD_EVENT": Event.STARTED})
            if standalone:
                print(f"DBUS_SYSTEM_BUS_ADDRESS={standalone.address}", flush=True)
            notifier.ready(status_line(manager))
            live = LiveNames(manager)

            def on_change(name: str, rec: object | None) -> None:
                if live.changed(name, rec):
                    notifier.status(status_text(live.names))

            manager.subscribe(on_change)
            reloads = asyncio.ensure_future(
                reload_on_each(hup, lambda: reload_config(args, manager, server, notifier)))
            try:
                lost = await until_stopped(server, stop)
            finally:
                reloads.cancel()
            if lost is not None:
                log.error("Lost the connection to the bus (%s); stopping.", lost)
            notifier.stopping(f"Stopping; {status_line(manager).lower()}")
            if args.discard_on_exit:
                for rec in manager.list():
                    try:
                        await manager.discard(rec.name, force=True)
                    except OverlaydError as e:  # go on with the others
                        log.warning("Cannot discard overlay '%s' on exit: %s", rec.name, e)
        finally:
            watchdog.cancel()
            server.stop()
            await manager.aclose()
    finally:
        if standalone:
            await standalone.stop()
    log.info("Stopped; %d overlays stay as they are.", len(manager.list()),
             extra={"OVERLAYD_EVENT": Event.STOPPED})
    # Not 0 after losing the bus: the service did not stop because it was asked to, and
    # Restart=on-failure must bring it back.
    return 0 if lost is None else 1


def config_overrides(args: argparse.Namespace) -> dict[str, object]:
    """What the command line sets over the configuration file (at start and each reload)."""
    return {"runtime_dir": args.runtime_dir} if args.runtime_dir else {}


def reload_config(args: argparse.Namespace, manager: OverlayManager, server: BusServer,
                  notifier: Notifier) -> bool:
    """Read the configuration again (SIGHUP): its defaults and limits apply to what is
    asked from now on. A file that cannot be read or checked is logged (naming the file
    and the setting) and the configuration in use stays. Where the records, mount points
    and layer files are changes only with a restart (config.RESTART_ONLY)."""
    notifier.reloading("Reloading the configuration")
    try:
        try:
            new = load_config(args.config, **config_overrides(args))
        except OverlaydError as e:
            log.error("Cannot reload the configuration; the one in use stays: %s", e,
                      extra={"OVERLAYD_CONFIG": str(args.config)})
            return False
        new, kept = reloaded(manager.config, new)
        changed = differences(manager.config, new)
        manager.set_config(new)
        server.service.config_changed()
        if kept:
            log.warning("The configuration changes %s, which take effect only when overlayd "
                        "restarts; the running daemon keeps the values it has.",
                        ", ".join(kept), extra={"OVERLAYD_CONFIG": str(args.config)})
        log.info("Reloaded the configuration from '%s': %s.", args.config,
                 ", ".join(changed) + " changed" if changed else "nothing changed",
                 extra={"OVERLAYD_CONFIG": str(args.config),
                        "OVERLAYD_CHANGED": ",".join(changed) or None})
        return True
    finally:
        notifier.ready(status_line(manager))


def boot_overlays() -> dict[str, OverlaySpec]:
    """The specs of the boot overlays (NAME.overlay with boot = true), for adoption."""
    files, problems = overlayfile.load_boot()
    for problem in problems:
        log.warning("Boot overlays: %s", problem)
    return {name: spec_file.spec(name) for name, (_path, spec_file) in files.items()}


def status_line(manager: OverlayManager) -> str:
    """STATUS= for systemctl status: how many overlays are live, and which."""
    return status_text([rec.name for rec in manager.list()])


def status_text(names: list[str]) -> str:
    """The status line of the overlays NAMES (sorted)."""
    if not names:
        return "No overlays live"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"{len(names)} overlay{'s' if len(names) != 1 else ''} live: {shown}"


class LiveNames:
    """The names of the live overlays, sorted, kept up to date with each change: the
    status line after a Create or Discard costs no sort of all the overlays (at a
    thousand, that was most of what made a Discard slower than at none). A change of
    state of an overlay leaves the line as it is, and is not sent again."""

    def __init__(self, manager: OverlayManager) -> None:
        self.names = [rec.name for rec in manager.list()]

    def changed(self, name: str, rec: object | None) -> bool:
        """Take the change of NAME (REC None: it is gone); whether the names changed."""
        i = bisect.bisect_left(self.names, name)
        here = i < len(self.names) and self.names[i] == name
        if rec is None and here:
            del self.names[i]
        elif rec is not None and not here:
            self.names.insert(i, name)
        else:
            return False
        return True


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM and SIGINT set."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def reload_on_signal() -> asyncio.Event:
    """An event that SIGHUP sets (a reload asked for)."""
    hup = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hup.set)
    return hup


async def reload_on_each(hup: asyncio.Event, reload: Callable[[], object]) -> None:
    """RELOAD once for each time HUP is set (signals that come during one reload make one
    more), until cancelled."""
    while True:
        await hup.wait()
        hup.clear()
        try:
            reload()
        except Exception:  # never the end of reloading, nor of the daemon
            log.exception("Reloading the configuration failed unexpectedly.")


async def until_stopped(server: BusServer, stop: asyncio.Event) -> str | None:
    """Serve until STOP is set (None) or the bus connection is lost (why)."""
    lost = asyncio.ensure_future(server.wait_lost())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for t in (lost, stopped):
        t.cancel()
    return lost.result() if lost.done() and not lost.cancelled() else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(logging.DEBUG if args.debug else logging.INFO)
    if os.geteuid() != 0:
        print("overlayd: must run as root (it attaches loop devices and mounts).",
              file=sys.stderr)
        return 1
    try:
        return asyncio.run(serve(args))
    except OverlaydError as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
