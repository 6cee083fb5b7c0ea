"""overlayctl commit, jobs, cancel: commits and the Job objects that show them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from overlayd.bus.names import JOB_IFACE, job_id_of, overlay_path
from overlayd.bus.wire import ClientError, ClientReads
from overlayd.cli.common import EXIT_NO_SUCH, Command, did, say, table, time_left
from overlayd.cli.layers import add_commit_options
from overlayd.sizes import format_size, human

if TYPE_CHECKING:
    from overlayd.bus.client import OverlaydClient


class CommitView:
    """What overlayctl commit shows: on a terminal a progress bar (rich) with percent, bytes,
    rate and time left from the Job; elsewhere one line at the start and one at the end."""

    def __init__(self, name: str, used: int, tty: bool, quiet: bool = False) -> None:
        self.name = name
        self.quiet = quiet
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
        if not self.announced and not self.quiet:
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
        did(args, overlay=args.name, committed=False, commit_at_shutdown=True)
        say(args, f"The changes to the root file system ({format_size(used)} in RAM now) will be "
              f"written to {p['Image']} when the system shuts down or reboots. Until then "
              "they are in RAM only; 'overlayctl discard root' cancels.")
        return 0
    quiet = args.json or args.quiet
    view = args.view = CommitView(args.name, used, sys.stderr.isatty() and not quiet, quiet)
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
        await client.commit(args.name, target=getattr(args, "target", None),
                            layer_format=getattr(args, "layer_format", None))
    finally:
        view.close()
    if not view.tty:
        view.announce()
    summary = view.message.removeprefix("Committed ").rstrip(".")
    done = f": {summary}" if summary else ""
    say(args, f"Committed overlay '{args.name}'{done}.")
    did(args, overlay=args.name, committed=True, job=view.job, message=view.message)
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


async def cmd_jobs(client: ClientReads, args: argparse.Namespace) -> int:
    jobs = await client.jobs()
    names = {p: n for n, p in await client.overlays()}
    for j in jobs:
        j["Overlays"] = [names.get(o, o.rsplit("/", 1)[1]) for o in j.get("Objects", [])]
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    rows = []
    for j in jobs:
        overlays = ",".join(j["Overlays"])
        progress = f"{j['Progress'] * 100:.1f}%" if j.get("ProgressValid") else "-"
        rows.append((str(j["Id"]), j["Operation"], overlays, progress,
                     human(j["Bytes"]) if j.get("Bytes") else "-",
                     f"{human(j['Rate'])}/s" if j.get("Rate") else "-",
                     time_left(j.get("ExpectedEndTime", 0)) or "-",
                     str(j["StartedByUID"])))
    table(args, ("JOB", "OPERATION", "OVERLAY", "PROGRESS", "BYTES", "RATE", "LEFT", "UID"),
          rows, "job")
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
    import asyncio  # here: the reading commands start without it

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
            say(args, f"Job {j['Id']} ({j['Operation']} of overlay {target}) ended before it "
                      "could be cancelled.")
        else:
            say(args, f"Cancelled job {j['Id']} ({j['Operation']} of overlay {target}). "
                      f"{message}".rstrip())
    did(args, jobs=[{"job": j["Id"], "operation": j["Operation"], "objects": j.get("Objects", []),
                     "cancelled": not ended[j["ObjectPath"]][0],
                     "message": ended[j["ObjectPath"]][1]} for j in chosen])
    return 0


def _commit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    add_commit_options(p)  # --target, --layer-format (issue 14)


def _cancel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", metavar="JOB|NAME")


COMMANDS = (
    Command("commit", "merge the writes into the image", cmd_commit, arguments=_commit_args),
    Command("jobs", "list the jobs (commits) running", reads=cmd_jobs),
    Command("cancel", "cancel a job: its number, or the name of the overlay it commits",
            cmd_cancel, arguments=_cancel_args),
)
