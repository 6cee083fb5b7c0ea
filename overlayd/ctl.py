"""overlayctl: overlayd from the command line, over the bus only.

    overlayctl list | status NAME | diff NAME          [--json]
    overlayctl create NAME IMAGE [--mountpoint P] [--size S] [--option O]... [--fstype T]
    overlayctl commit NAME                    a progress bar on a terminal; Ctrl-C leaves it
                                              running in overlayd as a job; for "root": at
                                              shutdown
    overlayctl commit NAME --target layer [--layer-format erofs|squashfs]
                                              write the writes as a new layer file instead
    overlayctl layers NAME                    the layer files stacked above the image
    overlayctl jobs [--json]                  the jobs (commits) running now
    overlayctl cancel JOB|NAME                cancel job JOB, or the commit of overlay NAME
    overlayctl discard NAME [--force]         for "root": at the next reboot
    overlayctl root enable [--size S] | disable   the root on an overlay from the next boot
    overlayctl start NAME | stop NAME         NAME.overlay, for overlayd@NAME.service
    overlayctl render NAME [--directory DIR]  the mount units of a boot overlay
    overlayctl schema                         JSON Schema of .overlay files

Global options, before or after the command: --no-ask-password, --json (what a command did,
as JSON), --no-legend (no header and footer in tables), -q/--quiet (no messages), --version.

Exit codes, for scripts, in the manner of sysexits(3): systemd never names them as LSB codes:
    0  success
    1  the operation failed (MountFailed, CommitFailed, NoSpace, LimitExceeded, Failed,
       LimitsExceeded, UnknownMethod)
   64  bad usage or invalid arguments (InvalidArgs)
   65  an invalid overlay description: a NAME.overlay file, a spec (InvalidSpec)
   66  no such overlay (NoSuchOverlay)
   69  overlayd cannot be reached
   73  an overlay of that name exists already (OverlayExists)
   75  busy: the overlay or its image is in use (OverlayBusy, ImageInUse)
   77  not authorized (AccessDenied, InteractiveAuthorizationRequired)
   79  cancelled (Cancelled): the commit was cancelled, nothing was lost
  130  interrupted by Ctrl-C; a commit goes on in overlayd as a job
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from overlayd import __version__
from overlayd.bus.wire import ClientError, WireClient, run_sync
from overlayd.cli import files, jobs, layers, overlays
from overlayd.cli.common import (
    EXIT_BUSY,
    EXIT_CANCELLED,
    EXIT_CODES,
    EXIT_DATAERR,
    EXIT_DENIED,
    EXIT_EXISTS,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_SUCH,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Command,
    Parser,
    exit_code,
    global_options,
)
from overlayd.errors import NoSuchOverlay, OverlaydError

__all__ = ["COMMANDS", "EXIT_BUSY", "EXIT_CANCELLED", "EXIT_CODES", "EXIT_DATAERR", "EXIT_DENIED",
           "EXIT_EXISTS", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_NO_SUCH", "EXIT_UNREACHABLE",
           "EXIT_USAGE", "exit_code", "main", "parser"]

# Every command, in the order of the help: a group's rows come from its module.
COMMANDS: tuple[Command, ...] = (*overlays.COMMANDS, *jobs.COMMANDS, *layers.COMMANDS,
                                 *files.COMMANDS)


def parser() -> argparse.ArgumentParser:
    common = global_options(default=False)
    p = Parser(prog="overlayctl", parents=[global_options(default=True)],
               description="Control overlayd: read-only images with their "
                           "writes in RAM, committed or discarded.",
               epilog=__doc__.split("Exit codes", 1)[1].join(["Exit codes", ""])
               if __doc__ else None,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"overlayctl {__version__}")
    # prog given: argparse would otherwise make a help formatter here, which imports shutil
    # (and with it bz2 and lzma) for the terminal's width, on every start
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", prog=p.prog)
    for c in COMMANDS:
        cp = sub.add_parser(c.name, parents=[common], help=c.help)
        if c.arguments is not None:
            c.arguments(cp)
    return p


def command(name: str) -> Command:
    return next(c for c in COMMANDS if c.name == name)


async def run(args: argparse.Namespace) -> int:
    from overlayd.bus.client import OverlaydClient  # dbus-next: not for the reading commands

    bus_run = command(args.command).run
    assert bus_run is not None
    client = await OverlaydClient.connect(interactive=not args.no_ask_password)
    try:
        return await bus_run(client, args)
    finally:
        client.close()


def read(args: argparse.Namespace) -> int:
    """A command that only reads: on the wire client, without dbus-next and asyncio, which
    were most of ``overlayctl list``'s start-up (issue 15)."""
    reads = command(args.command).reads
    assert reads is not None
    client = WireClient.connect(interactive=not args.no_ask_password)
    try:
        return run_sync(reads(client, args))
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code = _main(args)
    if args.json and getattr(args, "result", None) is not None:
        print(json.dumps(args.result, indent=2))
    return code


def _main(args: argparse.Namespace) -> int:
    try:
        c = command(args.command)
        if c.local is not None:
            return c.local(args)
        if c.reads is not None:
            return read(args)
        if c.reads_file:  # a bad file is reported before the bus
            args.loaded = files.overlay_file(args)
        import asyncio

        return asyncio.run(run(args))
    except NoSuchOverlay as e:  # no NAME.overlay
        print(f"overlayctl: {e}", file=sys.stderr)
        return EXIT_NO_SUCH
    except OverlaydError as e:  # a bad NAME.overlay
        print(f"overlayctl: {e}", file=sys.stderr)
        return EXIT_DATAERR
    except ClientError as e:
        print(f"overlayctl: {e}", file=sys.stderr)
        if e.unreachable:
            return EXIT_UNREACHABLE
        return EXIT_FAILED if e.error is None else exit_code(e.error)
    except ValueError as e:  # a size that does not parse
        print(f"overlayctl: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"overlayctl: {e.strerror}: {e.filename}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        jobs.interrupted(args)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
