"""overlayctl list, status, diff, create, discard, root, start, stop, reload: the
overlays."""

from __future__ import annotations

import argparse
import json
import os
import stat
from typing import TYPE_CHECKING, Any

from overlayd.bus.wire import ClientError, ClientReads
from overlayd.cli.common import Command, did, percent, say, since, table
from overlayd.cli.files import overlay_file_args
from overlayd.cli.jobs import cmd_commit
from overlayd.errors import NoSuchOverlay, OverlayExists
from overlayd.sizes import MAX_U64, format_approx, format_size, parse_size

if TYPE_CHECKING:
    from overlayd.bus.client import OverlaydClient


async def cmd_list(client: ClientReads, args: argparse.Namespace) -> int:
    rows = []
    for _name, path in await client.overlays():
        try:
            rows.append(await client.properties(path) | {"ObjectPath": path})
        except ClientError:  # discarded between the list and this read
            continue
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table(args, ("NAME", "STATE", "USED", "IMAGE", "MOUNT POINT"),
          [(r["Name"], r["State"], format_size(r["UpperUsed"]), r["Image"], r["MountPoint"])
           for r in rows], "overlay")
    return 0


async def cmd_status(client: ClientReads, args: argparse.Namespace) -> int:
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
        *_partition_line(p),
        ("Loop device", p["LoopDevice"] or "-"),
        ("Writes", f"{format_size(p['UpperUsed'])} of {format_size(p['UpperSize'])} in RAM, "
                   f"{p['UpperInodesUsed']} inodes"),
        ("Usage", f"{p.get('UpperUsage', 'ok')} ({percent(p['UpperUsed'], p['UpperSize'])} "
                  "of the RAM for writes)"),
        ("Image space", _image_space_line(p)),
        ("Upper", _upper_line(p)),
        ("Engine", _engine_line(p)),
        ("Options", ",".join(p["MountOptions"]) or "-"),
        ("Owner", f"uid {p['OwnerUID']}"),
        ("Created", since(p["CreatedUSec"])),
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


READ_ONLY_FSTYPES = ("squashfs", "erofs", "iso9660")


def _image_space_line(p: dict[str, Any]) -> str:
    """The image's free space beside the writes: whether a commit into it will fit."""
    if p.get("FsType") in READ_ONLY_FSTYPES:
        return f"none: {p['FsType']} is read-only (commit to a layer)"
    size, free = p.get("ImageSize", 0), p.get("ImageFree", 0)
    if not size:
        return "-"
    line = f"{format_approx(free)} free of {format_approx(size)}"
    if free < p["UpperUsed"]:
        line += f", less than the {format_approx(p['UpperUsed'])} of writes: a commit may " \
                "not fit"
    return line


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
            if spec["size"] > MAX_U64:  # else dbus-next's 'DBus UINT64 type "t" must be ...'
                raise ValueError(f"A size of {args.size} for the writes is more than any "
                                 "machine's memory; ask for less.")
        if args.options:
            spec["mount_options"] = [o for opt in args.options for o in opt.split(",") if o]
        if args.fstype:
            spec["fstype"] = args.fstype
        if args.upper:
            spec["upper"] = args.upper
        if args.compressor:
            spec["compressor"] = args.compressor
        if args.partition is not None:
            spec["partition"] = partition_arg(args.partition)
        if args.engine:
            spec["engine"] = args.engine
        path = await client.create(args.name, spec)
    finally:
        if fd is not None:
            os.close(fd)
    p = await client.properties(path)
    say(args, f"Created overlay '{args.name}' of {p['Image']} at {p['MountPoint']}.")
    did(args, overlay=args.name, created=True, object_path=path, image=p["Image"],
        mountpoint=p["MountPoint"], size=p["UpperSize"])
    return 0


async def cmd_discard(client: OverlaydClient, args: argparse.Namespace) -> int:
    path = await client.path_of(args.name)
    if path == await client.root_overlay():
        await client.discard(args.name, force=args.force)
        did(args, overlay=args.name, discarded=False, discard_at_reboot=True)
        say(args, "The writes to the root file system will be thrown away at the next reboot "
              "(nothing is unmounted now); no commit at shutdown is pending.")
        return 0
    await client.discard(args.name, force=args.force)
    say(args, f"Discarded overlay '{args.name}'.")
    did(args, overlay=args.name, discarded=True)
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
    say(args, f"From the next boot on, the root file system will be {what}; {where}.")
    cmdline = _kernel_root_setting()
    did(args, root_overlay_at_boot=enabled, kernel_command_line=cmdline)
    if cmdline is not None:
        say(args, f"Note: this boot's kernel command line has overlayd.root={cmdline}, which "
              "wins over the setting while it is there.")
    return 0


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
        say(args, f"Overlay '{args.name}' is up already.")
        did(args, created=False)
    else:
        p = await client.properties(obj)
        say(args, f"Created overlay '{args.name}' from {path}.")
        did(args, created=True)
    did(args, overlay=args.name, file=str(path), object_path=obj, state=p["State"],
        image=p["Image"], mountpoint=p["MountPoint"], size=p["UpperSize"],
        on_stop=spec_file.on_stop)
    say(args, f"Overlay '{args.name}': {p['State']}, {p['Image']} at {p['MountPoint']}, "
          f"{format_size(p['UpperSize'])} of RAM for writes, on stop: {spec_file.on_stop}; "
          f"commit with 'overlayctl commit {args.name}'.")
    return 0


async def cmd_stop(client: OverlaydClient, args: argparse.Namespace) -> int:
    """Commit first if on_stop says so; a failed commit keeps the overlay and its writes."""
    _path, spec_file = args.loaded
    try:
        await client.path_of(args.name)
    except ClientError as e:
        if not e.is_a(NoSuchOverlay):
            raise
        say(args, f"Overlay '{args.name}' is not up; nothing to do.")
        did(args, overlay=args.name, committed=False, discarded=False, was_up=False)
        return 0
    if spec_file.on_stop == "commit":
        await cmd_commit(client, args)
    args.force = False
    return await cmd_discard(client, args)


MAX_U32 = (1 << 32) - 1  # a partition number is a D-Bus 'u'


def partition_arg(text: str) -> int | str:
    """--partition: digits are a number (2), anything else a GPT label (rootfs)."""
    if not (text.isascii() and text.isdigit()):
        return text
    if len(text) > 10 or int(text) > MAX_U32:  # else dbus-next's 'DBus UINT32 type ...'
        raise ValueError(f"Invalid 'partition': {text[:20]} is too large a partition "
                         "number.")
    return int(text)


def _partition_line(p: dict[str, Any]) -> list[tuple[str, str]]:
    if not p.get("Partition"):
        return []
    start, size = p.get("PartitionOffset", 0), p.get("PartitionSize", 0)
    return [("Partition", f"{p['Partition']} ({format_size(size)} at byte {start})")]


async def cmd_reload(client: OverlaydClient, args: argparse.Namespace) -> int:
    """Apply NAME.overlay again to the live overlay (systemctl reload overlayd@NAME): a new
    size now; what cannot change while it is mounted is named. Never commits."""
    path, spec_file = args.loaded
    spec = spec_file.spec(args.name).model_dump(exclude_none=True,
                                                exclude={"name", "image_fd"})
    spec["image"] = os.path.realpath(spec["image"])  # as the kernel resolved it, as start
    if "mountpoint" in spec:
        spec["mountpoint"] = os.path.realpath(spec["mountpoint"])
    spec["layers"] = [os.path.realpath(la) for la in spec.get("layers", ())]
    obj = await client.path_of(args.name)
    before = await client.properties(obj)
    changed, not_changed = await client.reconfigure(args.name, spec)
    p = await client.properties(obj)
    did(args, overlay=args.name, file=str(path), changed=changed, not_changed=not_changed,
        size=p["UpperSize"])
    if "size" in changed:
        say(args, f"Overlay '{args.name}': the RAM for its writes is "
                  f"{format_size(p['UpperSize'])} now (was {format_size(before['UpperSize'])}).")
    elif not not_changed:
        say(args, f"Overlay '{args.name}' is as {path} describes it; nothing changed.")
    for key, why in sorted(not_changed.items()):
        say(args, f"Overlay '{args.name}': '{key}' in {path} differs but cannot change "
                  f"while it is mounted: {why}.")
    return 0


def _upper_line(p: dict[str, Any]) -> str:
    """tmpfs; or zram with what the writes take compressed, and the ratio."""
    kind = str(p.get("UpperKind", "tmpfs"))
    if kind != "zram":
        return kind
    orig, comp = p.get("UpperOriginalSize", 0), p.get("UpperCompressedSize", 0)
    ratio = f", ratio {orig / comp:.2f}" if comp else ""
    return f"zram: {format_size(orig)} stored in {format_size(comp)} of RAM{ratio}"


def _engine_line(p: dict[str, Any]) -> str:
    engine = str(p.get("Engine", "kernel"))
    return "fuse (fuse-overlayfs)" if engine == "fuse" else "kernel (overlayfs)"


def _name(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")


def _create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("image", help="image file, block device or directory")
    p.add_argument("--mountpoint", help="default: /run/overlayd/mnt/NAME")
    p.add_argument("--size", help="RAM for the writes, e.g. 512M or 1G")
    p.add_argument("--option", action="append", default=[], dest="options", metavar="OPTION",
                   help="mount option of the merged view (nosuid, nodev, noexec, ro, ...)")
    p.add_argument("--fstype", help="file system of the image (detected if not given)")
    p.add_argument("--partition", metavar="N|LABEL",
                   help="for a partitioned image (MBR or GPT): the partition to use, by "
                        "number or by GPT partition label")
    p.add_argument("--upper", choices=["tmpfs", "zram"],
                   help="where the writes live: tmpfs (default) or zram (compressed RAM)")
    p.add_argument("--compressor", help="with --upper zram: the compression algorithm "
                                        "(default: the kernel's)")
    p.add_argument("--engine", choices=["kernel", "fuse"],
                   help="what merges the layers: kernel (default, overlayfs) or fuse "
                        "(fuse-overlayfs, where the kernel has no overlayfs)")


def _discard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="detach even if files are open in it")


def _root_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("enable", "disable"))
    p.add_argument("--size", help="RAM for the writes: 50%% (the default) or e.g. 2G")


COMMANDS = (
    Command("list", "list the overlays", reads=cmd_list),
    Command("status", "show one overlay", reads=cmd_status, arguments=_name),
    Command("diff", "what the writes changed", cmd_diff, arguments=_name),
    Command("create", "create an overlay of an image", cmd_create, arguments=_create_args),
    Command("discard", "throw the writes away and unmount", cmd_discard,
            arguments=_discard_args),
    Command("root", "put the root file system on an overlay from the next boot on", cmd_root,
            arguments=_root_args),
    Command("start", "create overlay NAME from its NAME.overlay file", cmd_start,
            arguments=overlay_file_args, reads_file=True),
    Command("stop", "do what NAME.overlay's on_stop says: discard, or commit first", cmd_stop,
            arguments=overlay_file_args, reads_file=True),
    Command("reload", "apply NAME.overlay again to the live overlay: a new size now, "
            "the rest named (never commits)", cmd_reload, arguments=overlay_file_args,
            reads_file=True),
)
