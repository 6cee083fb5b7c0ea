"""overlayctl: overlayd from the command line, over the bus only.

    overlayctl list | status NAME | diff NAME          [--json]
    overlayctl create NAME IMAGE [--mountpoint P] [--size S] [--option O]... [--fstype T]
    overlayctl commit NAME                    for "root": at shutdown
    overlayctl discard NAME [--force]         for "root": at the next reboot
    overlayctl root enable [--size S] | disable   the root on an overlay from the next boot
    overlayctl start NAME | stop NAME         NAME.overlay, for overlayd@NAME.service
    overlayctl render NAME [--directory DIR]  the mount units of a boot overlay
    overlayctl schema                         JSON Schema of .overlay files

Exit codes (for scripts):
    0  success
    1  the operation failed (MountFailed, CommitFailed, NoSpace, LimitExceeded, Failed,
       LimitsExceeded, UnknownMethod)
    2  bad usage or invalid arguments (InvalidArgs, InvalidSpec)
    3  no such overlay (NoSuchOverlay)
    4  not authorized (AccessDenied, InteractiveAuthorizationRequired)
    5  busy: the overlay or its image is in use (OverlayBusy, ImageInUse)
    6  an overlay of that name exists already (OverlayExists)
    7  overlayd cannot be reached
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from overlayd import overlayfile
from overlayd.bus.client import ClientError, OverlaydClient
from overlayd.bus.errors import AccessDenied, InvalidArgs
from overlayd.config import DEFAULT_CONFIG, load_config
from overlayd.errors import (
    ImageInUse,
    InvalidSpec,
    NoSuchOverlay,
    OverlayBusy,
    OverlaydError,
    OverlayExists,
)
from overlayd.model import format_size, parse_size
from overlayd.render import render

EXIT_FAILED, EXIT_USAGE, EXIT_NO_SUCH, EXIT_DENIED, EXIT_BUSY, EXIT_EXISTS, EXIT_UNREACHABLE = \
    1, 2, 3, 4, 5, 6, 7
# The exit code of each class of the error table (bus/errors.py ERRORS) that is not
# EXIT_FAILED; a subclass has its base's (InteractiveAuthorizationRequired: AccessDenied's).
EXIT_CODES: dict[type[Exception], int] = {
    InvalidArgs: EXIT_USAGE, InvalidSpec: EXIT_USAGE, NoSuchOverlay: EXIT_NO_SUCH,
    AccessDenied: EXIT_DENIED, OverlayBusy: EXIT_BUSY, OverlayExists: EXIT_EXISTS,
    ImageInUse: EXIT_BUSY,
}


def exit_code(error: type[Exception]) -> int:
    """The exit code for a reply naming ERROR, a class of the error table."""
    return next((EXIT_CODES[c] for c in error.__mro__ if c in EXIT_CODES), EXIT_FAILED)


PROGRESS_AFTER = 1.0  # seconds before a commit shows that it is still working


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-ask-password", action="store_true",
                        help="do not let polkit ask for a password; fail instead")
    reads = argparse.ArgumentParser(add_help=False)
    reads.add_argument("--json", action="store_true", help="print JSON")
    p = argparse.ArgumentParser(prog="overlayctl", parents=[common],
                                description="Control overlayd: read-only images with their "
                                            "writes in RAM, committed or discarded.",
                                epilog=__doc__.split("Exit codes", 1)[1].join(["Exit codes", ""])
                                if __doc__ else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", parents=[common, reads], help="list the overlays")
    s = sub.add_parser("status", parents=[common, reads], help="show one overlay")
    s.add_argument("name")
    d = sub.add_parser("diff", parents=[common, reads], help="what the writes changed")
    d.add_argument("name")
    c = sub.add_parser("create", parents=[common], help="create an overlay of an image")
    c.add_argument("name")
    c.add_argument("image", help="image file, block device or directory")
    c.add_argument("--mountpoint", help="default: /run/overlayd/mnt/NAME")
    c.add_argument("--size", help="RAM for the writes, e.g. 512M or 1G")
    c.add_argument("--option", action="append", default=[], dest="options", metavar="OPTION",
                   help="mount option of the merged view (nosuid, nodev, noexec, ro, ...)")
    c.add_argument("--fstype", help="file system of the image (detected if not given)")
    m = sub.add_parser("commit", parents=[common], help="merge the writes into the image")
    m.add_argument("name")
    x = sub.add_parser("discard", parents=[common], help="throw the writes away and unmount")
    x.add_argument("name")
    x.add_argument("--force", action="store_true", help="detach even if files are open in it")
    rt = sub.add_parser("root", parents=[common],
                        help="put the root file system on an overlay from the next boot on")
    rt.add_argument("action", choices=("enable", "disable"))
    rt.add_argument("--size", help="RAM for the writes: 50%% (the default) or e.g. 2G")
    st = sub.add_parser("start", parents=[common],
                        help="create overlay NAME from its NAME.overlay file")
    st.add_argument("name")
    st.add_argument("--file", type=Path, help="the .overlay file (default: search "
                    + ", ".join(str(d) for d in overlayfile.SEARCH_PATH) + ")")
    sp = sub.add_parser("stop", parents=[common],
                        help="do what NAME.overlay's on_stop says: discard, or commit first")
    sp.add_argument("name")
    sp.add_argument("--file", type=Path, help="the .overlay file (default: search)")
    r = sub.add_parser("render", help="print the mount units of the overlay in NAME.overlay")
    r.add_argument("name")
    r.add_argument("--file", type=Path, help="the .overlay file (default: search)")
    r.add_argument("--directory", type=Path, help="write the units into DIR instead")
    r.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help=f"overlayd's configuration (default {DEFAULT_CONFIG})")
    sub.add_parser("schema", help="print the JSON Schema of .overlay files")
    return p


def _since(usec: int) -> str:
    if not usec:
        return "-"
    return dt.datetime.fromtimestamp(usec / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def cmd_list(client: OverlaydClient, args: argparse.Namespace) -> int:
    rows = []
    for _name, path in await client.overlays():
        try:
            rows.append(await client.properties(path) | {"ObjectPath": path})
        except ClientError:  # discarded between the list and this read
            continue
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if rows:
        header = ("NAME", "STATE", "USED", "IMAGE", "MOUNT POINT")
        table = [(r["Name"], r["State"], format_size(r["UpperUsed"]), r["Image"],
                  r["MountPoint"]) for r in rows]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
        for line in (header, *table):
            print("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=False)).rstrip())
        print()
    print(f"{len(rows)} overlay{'s' if len(rows) != 1 else ''} listed.")
    return 0


async def cmd_status(client: OverlaydClient, args: argparse.Namespace) -> int:
    path = await client.path_of(args.name)
    p = await client.properties(path)
    if args.json:
        print(json.dumps(p | {"ObjectPath": path}, indent=2))
        return 0
    state = p["State"] + (" (half-committed: commit again to finish)"
                          if p.get("HalfCommitted") else "")
    fields = [
        ("State", state),
        ("Image", f"{p['Image']} ({p['FsType'] or 'directory'})"),
        ("Mount point", p["MountPoint"]),
        ("Loop device", p["LoopDevice"] or "-"),
        ("Writes", f"{format_size(p['UpperUsed'])} of {format_size(p['UpperSize'])} in RAM, "
                   f"{p['UpperInodesUsed']} inodes"),
        ("Options", ",".join(p["MountOptions"]) or "-"),
        ("Owner", f"uid {p['OwnerUID']}"),
        ("Created", _since(p["CreatedUSec"])),
    ]
    if p.get("LastError"):
        fields.append(("Last error", p["LastError"]))
    if path == await client.root_overlay():
        fate = f"written to {p['Image']} at shutdown" if p.get("CommitAtShutdown") else \
            "thrown away at the next reboot"
        fields.insert(0, ("Root", f"protected root file system: its writes use "
                                  f"{format_size(p['UpperUsed'])} of RAM, {fate}"))
    print(p["Name"])
    for label, value in fields:
        print(f"{label:>12}: {value}")
    return 0


async def cmd_diff(client: OverlaydClient, args: argparse.Namespace) -> int:
    changes = await client.diff(args.name)
    if args.json:
        print(json.dumps([{"path": p, "kind": k} for p, k in changes], indent=2))
    else:
        for path, kind in changes:
            print(f"{kind:9} {path}")
    return 0


def _image_arg(image: str) -> tuple[dict[str, Any], int | None]:
    """A file or block device goes as an fd we opened (proving we may read it, as
    udisksctl loop-setup does); a directory goes as its absolute path."""
    path = os.path.abspath(image)
    try:
        st = os.stat(path)
    except OSError:
        return {"image": path}, None  # let overlayd say what is wrong with it
    if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return {"image_fd": fd}, fd
    return {"image": path}, None


async def cmd_create(client: OverlaydClient, args: argparse.Namespace) -> int:
    spec, fd = _image_arg(args.image)
    try:
        if args.mountpoint:
            spec["mountpoint"] = os.path.abspath(args.mountpoint)
        if args.size:
            spec["size"] = parse_size(args.size)
        if args.options:
            spec["mount_options"] = [o for opt in args.options for o in opt.split(",") if o]
        if args.fstype:
            spec["fstype"] = args.fstype
        path = await client.create(args.name, spec)
    finally:
        if fd is not None:
            os.close(fd)
    p = await client.properties(path)
    print(f"Created overlay '{args.name}' of {p['Image']} at {p['MountPoint']}.")
    return 0


async def cmd_commit(client: OverlaydClient, args: argparse.Namespace) -> int:
    path = await client.path_of(args.name)
    p = await client.properties(path)
    used = p["UpperUsed"]
    if path == await client.root_overlay():  # / cannot be unmounted while it runs
        await client.commit(args.name, at_shutdown=True)
        print(f"The changes to the root file system ({format_size(used)} in RAM now) will be "
              f"written to {p['Image']} when the system shuts down or reboots. Until then "
              "they are in RAM only; 'overlayctl discard root' cancels.")
        return 0
    task = asyncio.ensure_future(client.commit(args.name))
    waited, tty = 0.0, sys.stderr.isatty()
    while not task.done():
        await asyncio.wait({task}, timeout=PROGRESS_AFTER)
        waited += PROGRESS_AFTER
        if not task.done() and (tty or waited == PROGRESS_AFTER):
            end = "\r" if tty else "\n"
            print(f"Committing '{args.name}' ({format_size(used)} in RAM)... {waited:.0f} s",
                  end=end, file=sys.stderr, flush=True)
    if waited > PROGRESS_AFTER and tty:
        print(file=sys.stderr)
    await task
    print(f"Committed overlay '{args.name}'.")
    return 0


async def cmd_discard(client: OverlaydClient, args: argparse.Namespace) -> int:
    path = await client.path_of(args.name)
    if path == await client.root_overlay():
        await client.discard(args.name, force=args.force)
        print("The writes to the root file system will be thrown away at the next reboot "
              "(nothing is unmounted now); no commit at shutdown is pending.")
        return 0
    await client.discard(args.name, force=args.force)
    print(f"Discarded overlay '{args.name}'.")
    return 0


def _kernel_root_setting() -> str | None:
    """overlayd.root= on this boot's kernel command line, which wins over the file."""
    try:
        with open("/proc/cmdline") as f:
            words = f.read().split()
    except OSError:
        return None
    found = [w.partition("=")[2] for w in words if w.startswith("overlayd.root=")]
    return found[-1] if found else None


async def cmd_root(client: OverlaydClient, args: argparse.Namespace) -> int:
    enabled = args.action == "enable"
    if args.size and not enabled:
        raise ValueError("--size goes with 'enable'")
    await client.set_root_at_boot(enabled, args.size)
    protected = await client.root_overlay() != "/"
    what = "on an overlay (its writes in RAM)" if enabled else "mounted as it is"
    where = "the setting is written into the real root file system at shutdown" \
        if protected else "set in /etc/overlayd/root.overlay"
    print(f"From the next boot on, the root file system will be {what}; {where}.")
    cmdline = _kernel_root_setting()
    if cmdline is not None:
        print(f"Note: this boot's kernel command line has overlayd.root={cmdline}, which "
              "wins over the setting while it is there.")
    return 0


def _overlay_file(args: argparse.Namespace) -> tuple[Path, overlayfile.OverlayFile]:
    if args.file is not None:
        overlayfile.check_file_name(args.name)
        return args.file, overlayfile.load(args.file)
    return overlayfile.load_named(args.name)


async def cmd_start(client: OverlaydClient, args: argparse.Namespace) -> int:
    """Create the overlay its file describes. One that is up already from the same image
    (adopted after a daemon restart, or a boot overlay) counts as started."""
    path, spec_file = args.loaded
    spec = spec_file.spec(args.name).model_dump(exclude_none=True, exclude={"name"})
    try:
        obj = await client.create(args.name, spec)
    except ClientError as e:
        if not e.is_a(OverlayExists):
            raise
        obj = await client.path_of(args.name)
        p = await client.properties(obj)
        wanted_mp = spec_file.mountpoint or p["MountPoint"]
        if p["Image"] != os.path.realpath(spec_file.image) or p["OwnerUID"] != 0 \
                or p["MountPoint"] != os.path.realpath(wanted_mp):
            raise  # someone else's overlay of that name: not ours to take over (or stop)
        print(f"Overlay '{args.name}' is up already.")
    else:
        p = await client.properties(obj)
        print(f"Created overlay '{args.name}' from {path}.")
    print(f"Overlay '{args.name}': {p['State']}, {p['Image']} at {p['MountPoint']}, "
          f"{format_size(p['UpperSize'])} of RAM for writes, on stop: {spec_file.on_stop}.")
    return 0


async def cmd_stop(client: OverlaydClient, args: argparse.Namespace) -> int:
    """Commit first if on_stop says so; a failed commit keeps the overlay and its writes."""
    _path, spec_file = args.loaded
    try:
        await client.path_of(args.name)
    except ClientError as e:
        if not e.is_a(NoSuchOverlay):
            raise
        print(f"Overlay '{args.name}' is not up; nothing to do.")
        return 0
    if spec_file.on_stop == "commit":
        await cmd_commit(client, args)
    return await cmd_discard(client, argparse.Namespace(name=args.name, force=False))


def cmd_render(args: argparse.Namespace) -> int:
    from overlayd.host.linux import LinuxHost  # memory size only; the bus commands need none

    path, spec_file = _overlay_file(args)
    units = render(args.name, spec_file, path, load_config(args.config),
                   LinuxHost().system.memory_total())
    for unit, text in units.all() + ([units.on_stop] if units.on_stop else []):
        if args.directory is not None:
            (args.directory / unit).parent.mkdir(exist_ok=True)
            (args.directory / unit).write_text(text)
            print(args.directory / unit)
        else:
            print(f"# {unit}\n{text}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(overlayfile.json_schema_text(), end="")
    return 0


LOCAL_COMMANDS = {"render": cmd_render, "schema": cmd_schema}  # no bus needed
COMMANDS = {"list": cmd_list, "status": cmd_status, "diff": cmd_diff, "create": cmd_create,
            "commit": cmd_commit, "discard": cmd_discard, "start": cmd_start, "stop": cmd_stop,
            "root": cmd_root}


async def run(args: argparse.Namespace) -> int:
    client = await OverlaydClient.connect(interactive=not args.no_ask_password)
    try:
        return await COMMANDS[args.command](client, args)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command in LOCAL_COMMANDS:
            return LOCAL_COMMANDS[args.command](args)
        if args.command in ("start", "stop"):  # a bad file is reported before the bus
            args.loaded = _overlay_file(args)
        return asyncio.run(run(args))
    except NoSuchOverlay as e:  # no NAME.overlay
        print(f"overlayctl: {e}", file=sys.stderr)
        return EXIT_NO_SUCH
    except OverlaydError as e:  # a bad NAME.overlay
        print(f"overlayctl: {e}", file=sys.stderr)
        return EXIT_USAGE
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
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
