"""overlayctl: overlayd from the command line, over the bus only.

    overlayctl list | status NAME | diff NAME          [--json]
    overlayctl create NAME IMAGE [--mountpoint P] [--size S] [--option O]... [--fstype T]
                                 [--upper tmpfs|zram] [--compressor ALGO]
    overlayctl commit NAME                    a progress bar on a terminal; Ctrl-C leaves it
                                              running in overlayd as a job; for "root": at
                                              shutdown
    overlayctl jobs [--json]                  the jobs (commits) running now
    overlayctl cancel JOB|NAME                cancel job JOB, or the commit of overlay NAME
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
    8  cancelled (Cancelled): the commit was cancelled, nothing was lost
  130  interrupted by Ctrl-C; a commit goes on in overlayd as a job
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
import time
from pathlib import Path
from typing import Any

from overlayd import overlayfile
from overlayd.bus.client import ClientError, OverlaydClient
from overlayd.bus.errors import AccessDenied, InvalidArgs
from overlayd.bus.names import JOB_IFACE, job_id_of, overlay_path
from overlayd.config import DEFAULT_CONFIG, load_config
from overlayd.errors import (
    Cancelled,
    ImageInUse,
    InvalidSpec,
    NoSuchOverlay,
    OverlayBusy,
    OverlaydError,
    OverlayExists,
)
from overlayd.jobs import human
from overlayd.model import format_size, parse_size
from overlayd.render import render

EXIT_FAILED, EXIT_USAGE, EXIT_NO_SUCH, EXIT_DENIED, EXIT_BUSY, EXIT_EXISTS, EXIT_UNREACHABLE = \
    1, 2, 3, 4, 5, 6, 7
EXIT_CANCELLED, EXIT_INTERRUPTED = 8, 130
# The exit code of each class of the error table (bus/errors.py ERRORS) that is not
# EXIT_FAILED; a subclass has its base's (InteractiveAuthorizationRequired: AccessDenied's).
EXIT_CODES: dict[type[Exception], int] = {
    InvalidArgs: EXIT_USAGE, InvalidSpec: EXIT_USAGE, NoSuchOverlay: EXIT_NO_SUCH,
    AccessDenied: EXIT_DENIED, OverlayBusy: EXIT_BUSY, OverlayExists: EXIT_EXISTS,
    Cancelled: EXIT_CANCELLED,
    ImageInUse: EXIT_BUSY,
}


def exit_code(error: type[Exception]) -> int:
    """The exit code for a reply naming ERROR, a class of the error table."""
    return next((EXIT_CODES[c] for c in error.__mro__ if c in EXIT_CODES), EXIT_FAILED)



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
    c.add_argument("--upper", choices=["tmpfs", "zram"],
                   help="where the writes live: tmpfs (default) or zram (compressed RAM)")
    c.add_argument("--compressor", help="with --upper zram: the compression algorithm "
                                        "(default: the kernel's)")
    m = sub.add_parser("commit", parents=[common], help="merge the writes into the image")
    m.add_argument("name")
    sub.add_parser("jobs", parents=[common, reads], help="list the jobs (commits) running")
    cj = sub.add_parser("cancel", parents=[common],
                        help="cancel a job: its number, or the name of the overlay it commits")
    cj.add_argument("job", metavar="JOB|NAME")
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
        ("Usage", f"{p.get('UpperUsage', 'ok')} ({_percent(p['UpperUsed'], p['UpperSize'])} "
                  "of the RAM for writes)"),
        ("Upper", _upper_line(p)),
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
        if args.upper:
            spec["upper"] = args.upper
        if args.compressor:
            spec["compressor"] = args.compressor
        path = await client.create(args.name, spec)
    finally:
        if fd is not None:
            os.close(fd)
    p = await client.properties(path)
    print(f"Created overlay '{args.name}' of {p['Image']} at {p['MountPoint']}.")
    return 0


def _upper_line(p: dict[str, Any]) -> str:
    """tmpfs; or zram with what the writes take compressed, and the ratio."""
    kind = str(p.get("UpperKind", "tmpfs"))
    if kind != "zram":
        return kind
    orig, comp = p.get("UpperOriginalSize", 0), p.get("UpperCompressedSize", 0)
    ratio = f", ratio {orig / comp:.2f}" if comp else ""
    return f"zram: {format_size(orig)} stored in {format_size(comp)} of RAM{ratio}"


def _percent(used: int, size: int) -> str:
    return f"{used * 100 // size}%" if size else "0%"


def time_left(end_usec: int) -> str:
    """'1m 05s' until END_USEC (microseconds since the epoch); '' if not known."""
    if not end_usec:
        return ""
    left = max(0, int(end_usec / 1e6 - time.time()))
    return f"{left // 60}m {left % 60:02d}s" if left >= 60 else f"{left}s"


class CommitView:
    """What overlayctl commit shows: on a terminal a progress bar (rich) with percent, bytes,
    rate and time left from the Job; elsewhere one line at the start and one at the end."""

    def __init__(self, name: str, used: int, tty: bool) -> None:
        self.name = name
        self.used = used
        self.tty = tty
        self.job: int | None = None
        self.path: str | None = None
        self.props: dict[str, Any] = {}
        self.message = ""
        self.announced = False
        self._bar: Any = None
        self._task: Any = None

    def seen(self, path: str, props: dict[str, Any]) -> None:
        """Our job appeared."""
        self.path, self.job, self.props = path, job_id_of(path), dict(props)
        if self.tty:
            self._start_bar()
        else:
            self.announce()
        self.update({})

    def announce(self) -> None:
        if not self.announced:
            self.announced = True
            job = f" as job {self.job}" if self.job is not None else ""
            print(f"Committing overlay '{self.name}' ({human(self.used)} in RAM){job}...",
                  flush=True)

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
        )

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             TaskProgressColumn(), DownloadColumn(binary_units=True),
                             TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[left]}"),
                             console=Console(stderr=True), transient=True)
        self._bar.start()
        self._task = self._bar.add_task(f"Committing '{self.name}' (job {self.job})",
                                        total=None, rate="", left="")

    def update(self, changed: dict[str, Any]) -> None:
        self.props.update(changed)
        if self._bar is None:
            return
        p = self.props
        total = int(p.get("Bytes", 0)) or None
        valid = bool(p.get("ProgressValid")) and total is not None
        rate = int(p.get("Rate", 0))
        self._bar.update(self._task, total=total if valid else None,
                         completed=float(p.get("Progress", 0.0)) * total if valid and total
                         else 0,
                         rate=f"{human(rate)}/s" if rate else "",
                         left=f"{time_left(int(p.get('ExpectedEndTime', 0)))} left"
                         if p.get("ExpectedEndTime") else "")

    def completed(self, message: str) -> None:
        self.message = message

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


async def cmd_commit(client: OverlaydClient, args: argparse.Namespace) -> int:
    """The blocking Commit (its error names the exit code), drawn from its Job; for the
    root overlay, a request to commit at shutdown."""
    path = await client.path_of(args.name)
    p = await client.properties(path)
    used = p["UpperUsed"]
    if path == await client.root_overlay():  # / cannot be unmounted while it runs
        await client.commit(args.name, at_shutdown=True)
        print(f"The changes to the root file system ({format_size(used)} in RAM now) will be "
              f"written to {p['Image']} when the system shuts down or reboots. Until then "
              "they are in RAM only; 'overlayctl discard root' cancels.")
        return 0
    view = args.view = CommitView(args.name, used, sys.stderr.isatty())
    uid = os.getuid()

    def on_signal(obj: str, iface: str, member: str, body: list[Any]) -> None:
        if member == "InterfacesAdded" and view.path is None:
            job, ifaces = body
            props = ifaces.get(JOB_IFACE)
            if props is not None and props.get("Objects") == [path] and \
                    props.get("StartedByUID") == uid:
                view.seen(job, props)
        elif obj == view.path and member == "PropertiesChanged":
            view.update(body[1])
        elif obj == view.path and member == "Completed":
            view.completed(body[1])

    await client.watch_jobs(on_signal)  # before the call: the job is seen from its start
    try:
        await client.commit(args.name)
    finally:
        view.close()
    if not view.tty:
        view.announce()
    summary = view.message.removeprefix("Committed ").rstrip(".")
    done = f": {summary}" if summary else ""
    print(f"Committed overlay '{args.name}'{done}.")
    return 0


def interrupted(args: argparse.Namespace) -> None:
    """Ctrl-C: say what goes on without us (a commit: in overlayd, as a job)."""
    view: CommitView | None = getattr(args, "view", None)
    if view is None:
        return
    view.close()
    if view.job is not None:
        print(f"overlayctl: the commit of overlay '{view.name}' goes on in overlayd as job "
              f"{view.job}; to cancel it: overlayctl cancel {view.job}", file=sys.stderr)
    else:
        print(f"overlayctl: the commit of overlay '{view.name}' goes on in overlayd; to "
              f"cancel it: overlayctl cancel {view.name}", file=sys.stderr)


async def cmd_jobs(client: OverlaydClient, args: argparse.Namespace) -> int:
    jobs = await client.jobs()
    names = {p: n for n, p in await client.overlays()}
    for j in jobs:
        j["Overlays"] = [names.get(o, o.rsplit("/", 1)[1]) for o in j.get("Objects", [])]
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    if jobs:
        header = ("JOB", "OPERATION", "OVERLAY", "PROGRESS", "BYTES", "RATE", "LEFT", "UID")
        table = []
        for j in jobs:
            overlays = ",".join(j["Overlays"])
            progress = f"{j['Progress'] * 100:.1f}%" if j.get("ProgressValid") else "-"
            table.append((str(j["Id"]), j["Operation"], overlays, progress,
                          human(j["Bytes"]) if j.get("Bytes") else "-",
                          f"{human(j['Rate'])}/s" if j.get("Rate") else "-",
                          time_left(j.get("ExpectedEndTime", 0)) or "-",
                          str(j["StartedByUID"])))
        widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
        for line in (header, *table):
            print("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=False)).rstrip())
        print()
    print(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''} listed.")
    return 0


async def cmd_cancel(client: OverlaydClient, args: argparse.Namespace) -> int:
    """Cancel job N, or every job of overlay NAME; wait until they have ended."""
    jobs = await client.jobs()
    chosen = [j for j in jobs if args.job.isdigit() and j["Id"] == int(args.job)]
    if not chosen:
        chosen = [j for j in jobs if overlay_path(args.job) in j.get("Objects", [])]
    if not chosen:
        what = f"job {args.job} nor overlay '{args.job}'" if args.job.isdigit() \
            else f"overlay '{args.job}'"
        print(f"overlayctl: no job runs for {what}.", file=sys.stderr)
        return EXIT_NO_SUCH
    ended: dict[str, tuple[bool, str]] = {}
    done = asyncio.Event()
    paths = {j["ObjectPath"] for j in chosen}

    def on_signal(obj: str, iface: str, member: str, body: list[Any]) -> None:
        if obj in paths and member == "Completed":
            ended[obj] = (body[0], body[1])
        elif member == "InterfacesRemoved" and body[0] in paths:
            ended.setdefault(body[0], (False, ""))
        if set(ended) >= paths:
            done.set()

    await client.watch_jobs(on_signal)
    for j in chosen:
        try:
            await client.cancel(j["Id"])
        except ClientError as e:
            if "UnknownObject" not in e.name and "UnknownMethod" not in e.name:
                raise
            ended.setdefault(j["ObjectPath"], (True, "it had finished"))
    if set(ended) < paths:
        await done.wait()
    names = {p: n for n, p in await client.overlays()}
    for j in chosen:
        success, message = ended[j["ObjectPath"]]
        target = ",".join(f"'{names.get(o, o.rsplit('/', 1)[1])}'" for o in j.get("Objects", []))
        if success:
            print(f"Job {j['Id']} ({j['Operation']} of overlay {target}) ended before it "
                  "could be cancelled.")
        else:
            print(f"Cancelled job {j['Id']} ({j['Operation']} of overlay {target}). "
                  f"{message}".rstrip())
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
            "root": cmd_root, "jobs": cmd_jobs, "cancel": cmd_cancel}


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
        interrupted(args)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
