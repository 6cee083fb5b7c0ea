"""What every overlayctl command shares: the exit codes, the parser class and the global
options, the output helpers (messages, --json results, tables), and the table entry a
command is (``Command``)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from overlayd.bus.errors import AccessDenied, InvalidArgs
from overlayd.errors import (
    Cancelled,
    ImageInUse,
    InvalidSpec,
    NoSuchOverlay,
    OverlayBusy,
    OverlayExists,
)

if TYPE_CHECKING:  # the reading commands start without dbus-next (bus/wire.py)
    from overlayd.bus.client import OverlaydClient
    from overlayd.bus.wire import ClientReads

# sysexits(3)-style, 64 and up, so that they never read as the LSB names systemd prints for
# a unit's exit status (5 is NOTINSTALLED there); 1 is any other failure.
EXIT_FAILED = 1
EXIT_USAGE = 64        # EX_USAGE: bad usage or invalid arguments
EXIT_DATAERR = 65      # EX_DATAERR: an invalid overlay description (.overlay file, spec)
EXIT_NO_SUCH = 66      # EX_NOINPUT: no such overlay
EXIT_UNREACHABLE = 69  # EX_UNAVAILABLE: overlayd cannot be reached
EXIT_EXISTS = 73       # EX_CANTCREAT: an overlay of that name exists already
EXIT_BUSY = 75         # EX_TEMPFAIL: busy, try again later
EXIT_DENIED = 77       # EX_NOPERM: not authorized
EXIT_CANCELLED = 79    # overlayd's own: the commit was cancelled, nothing was lost
EXIT_INTERRUPTED = 130
# The exit code of each class of the error table (bus/errors.py ERRORS) that is not
# EXIT_FAILED; a subclass has its base's (InteractiveAuthorizationRequired: AccessDenied's).
EXIT_CODES: dict[type[Exception], int] = {
    InvalidArgs: EXIT_USAGE, InvalidSpec: EXIT_DATAERR, NoSuchOverlay: EXIT_NO_SUCH,
    AccessDenied: EXIT_DENIED, OverlayBusy: EXIT_BUSY, OverlayExists: EXIT_EXISTS,
    Cancelled: EXIT_CANCELLED,
    ImageInUse: EXIT_BUSY,
}


def exit_code(error: type[Exception]) -> int:
    """The exit code for a reply naming ERROR, a class of the error table."""
    return next((EXIT_CODES[c] for c in error.__mro__ if c in EXIT_CODES), EXIT_FAILED)


class Parser(argparse.ArgumentParser):
    """Bad usage exits with EXIT_USAGE (64), not argparse's 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def _get_formatter(self) -> argparse.HelpFormatter:
        """argparse makes a formatter for every add_argument, and a formatter without a
        width imports shutil (with bz2 and lzma) for the terminal's: 2-5 ms of every
        start. The same width, from os (shutil.get_terminal_size's rule)."""
        make: Any = self.formatter_class  # typeshed's protocol knows no width
        formatter: argparse.HelpFormatter = make(prog=self.prog, width=_columns() - 2)
        return formatter


def _columns() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


# The global options: one table, given to the main parser (with their defaults) and to every
# command (with no default, so that one given before the command is not reset after it).
GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("--no-ask-password",), "do not let polkit ask for a password; fail instead"),
    (("--json",), "print what the command shows or did as JSON"),
    (("--no-legend",), "tables without their header and footer"),
    (("-q", "--quiet"), "no messages; only data, errors and the exit code"),
)


def global_options(default: bool) -> Parser:
    g = Parser(add_help=False)
    for flags, text in GLOBAL_OPTIONS:
        g.add_argument(*flags, action="store_true", help=text,
                       default=False if default else argparse.SUPPRESS)
    return g


def say(args: argparse.Namespace, text: str) -> None:
    """A message for a person: not with --json or -q."""
    if not (getattr(args, "json", False) or getattr(args, "quiet", False)):
        print(text, flush=True)


def did(args: argparse.Namespace, **result: Any) -> None:
    """What a command did, for --json: gathered, printed once as one object at the end."""
    args.result = {**getattr(args, "result", {}), **result}


def table(args: argparse.Namespace, header: tuple[str, ...], rows: list[tuple[Any, ...]],
          what: str) -> None:
    """Columns; with the legend (a header and 'N WHATs listed.') unless --no-legend."""
    lines = rows if args.no_legend else [header, *rows]
    if lines:
        widths = [max(len(str(x)) for x in col) for col in zip(*lines, strict=False)]
        for line in lines:
            print("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=False)).rstrip())
    if not args.no_legend:
        if rows:
            print()
        print(f"{len(rows)} {what}{'s' if len(rows) != 1 else ''} listed.")


def since(usec: int) -> str:
    if not usec:
        return "-"
    return dt.datetime.fromtimestamp(usec / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def percent(used: int, size: int) -> str:
    return f"{used * 100 // size}%" if size else "0%"


def time_left(end_usec: int) -> str:
    """'1m 05s' until END_USEC (microseconds since the epoch); '' if not known."""
    if not end_usec:
        return ""
    left = max(0, int(end_usec / 1e6 - time.time()))
    return f"{left // 60}m {left % 60:02d}s" if left >= 60 else f"{left}s"


BusRun = Callable[["OverlaydClient", argparse.Namespace], Awaitable[int]]
ReadRun = Callable[["ClientReads", argparse.Namespace], Coroutine[Any, Any, int]]
LocalRun = Callable[[argparse.Namespace], int]


class Command(NamedTuple):
    """One overlayctl command: a row of ctl.COMMANDS. To add a command, write its function
    and its arguments in the module of its group (overlayd/cli/), and add a row there.
    (A NamedTuple, not a dataclass: dataclasses imports inspect, 10 ms of every start.)"""

    name: str
    help: str
    run: BusRun | None = None  # over the bus
    reads: ReadRun | None = None  # or over the bus, only reading: the light wire client
    local: LocalRun | None = None  # or without it (render, schema)
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    reads_file: bool = False  # NAME.overlay is loaded (and checked) before the bus
