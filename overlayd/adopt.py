"""Adopting boot overlays: made by systemd's mount units (``boot.py`` writes them), not
by a daemon, so they have no state record until the daemon adopts them from the mount
table, with the record Create would have written."""

from __future__ import annotations

from collections.abc import Callable

from overlayd.config import DaemonConfig
from overlayd.errors import MountFailed
from overlayd.host.ports import Host
from overlayd.layout import Layout, is_within, mount_source
from overlayd.model import (
    ALLOWED_MOUNT_OPTIONS,
    Layer,
    Lower,
    LowerKind,
    Merged,
    Overlay,
    OverlaySpec,
    OverlayState,
    Upper,
    parse_size,
)
from overlayd.mountinfo import MountInfo

MountAt = Callable[[str], MountInfo | None]


def adopt_unrecorded(host: Host, cfg: DaemonConfig, name: str, spec: OverlaySpec | None,
                     mounts: list[MountInfo], now_usec: int = 0) -> Overlay | None:
    """Overlay NAME is mounted but has no record. If all three layers are up it becomes
    ours; SPEC (its .overlay file) says where, or else the mount table does. None if none
    of its layers is mounted; MountFailed, hands off, if only some are."""
    layout = Layout.for_overlay(cfg.runtime_dir, name)
    src = mount_source(name)

    def top(path: str) -> MountInfo | None:
        found = [m for m in mounts if m.target == path]
        return found[-1] if found else None

    ours = [m for m in mounts if m.source == src and m.fstype == "overlay"
            and m.super_option("upperdir") == str(layout.upper)]
    merged = top(spec.mountpoint or cfg.default_mountpoint(name)) if spec else \
        (ours[-1] if ours else None)
    # Its image mount: its own (mount units), or the shared one of its image (a daemon's
    # overlay whose record is gone), as the overlay names it.
    lower_path, shared = str(layout.lower), False
    named = (merged.super_option("lowerdir+") or merged.super_option("lowerdir")) \
        if merged is not None else None
    if named and is_within(named, layout.shared_lowers) and named != str(layout.shared_lowers):
        lower_path, shared = named, True
    lower, tmpfs = top(lower_path), top(str(layout.upper_mount))
    if lower is None and tmpfs is None and not ours:
        return None  # nothing mounted: leftovers to clean
    layers = [lower is not None and lower.source.startswith("/dev/"),
              tmpfs is not None and tmpfs.source == src and tmpfs.fstype == "tmpfs",
              merged is not None and merged.source == src and merged.fstype == "overlay"]
    if not all(layers) or lower is None or tmpfs is None or merged is None:
        raise MountFailed(f"Overlay '{name}' is mounted without a state record and only in "
                          f"part (image, tmpfs, overlay: "
                          f"{', '.join('up' if x else 'down' for x in layers)}); leaving it "
                          "as it is. If systemd is bringing it up, see 'systemctl status' of "
                          "its mount units.")
    stacked = _layer_mounts(layout, top, len(spec.layers) if spec is not None else None, name)
    if "ro" not in lower.options:
        raise MountFailed(f"Overlay '{name}': its image is mounted read-write at "
                          f"'{lower.target}'; leaving it as it is.")
    is_loop = lower.source.startswith("/dev/loop")
    if spec is not None:
        image, options = spec.image or "", spec.mount_options
    else:
        image = (host.images.loop_backing(lower.source) if is_loop else lower.source) or ""
        options = tuple(o for o in merged.options
                        if o in ALLOWED_MOUNT_OPTIONS and o not in ("rw", "relatime"))
    info = host.images.open_image(image, None)
    try:
        if info.kind is LowerKind.FILE and host.images.loop_backing(lower.source) != info.path:
            raise MountFailed(f"Overlay '{name}': '{lower.source}' at '{lower.target}' is "
                              f"not a loop device of '{info.path}'; leaving it as it is.")
        if info.kind is LowerKind.DIRECTORY:
            raise MountFailed(f"Overlay '{name}': its image is a directory.")
        size = tmpfs.super_option("size")
        # One partition of the image (a daemon's overlay whose record is gone): where it
        # lies is the loop device's; which number or label was asked is not known.
        offset, sizelimit = (host.images.loop_window(lower.source) or (0, 0)) if is_loop \
            else (0, 0)
        stack = tuple(_layer(host, m, name) for m in stacked)
        return Overlay(
            name=name, state=OverlayState.ACTIVE,
            lowers=(Lower(kind=info.kind, image=info.path, dev=info.dev, ino=info.ino,
                          fstype=lower.fstype,
                          loop_device=lower.source if is_loop else "",
                          shared=shared, offset=offset, sizelimit=sizelimit),),
            upper=Upper(size=parse_size(size) if size else cfg.default_size),  # '65536k'
            merged=Merged(mountpoint=merged.target,
                          created=merged.target == cfg.default_mountpoint(name),
                          options=options),
            owner_uid=0, created_usec=now_usec, layers=stack)
    finally:
        host.images.close_image(info)


def _layer_mounts(layout: Layout, top: MountAt, expected: int | None,
                  name: str) -> list[MountInfo]:
    """The layer files' mounts (issue 14), lowest first: LAYOUT.layer_mount(0), (1)... as
    long as they are mounted; EXPECTED (its .overlay file's count) must all be there."""
    found: list[MountInfo] = []
    while True:
        m = top(str(layout.layer_mount(len(found))))
        if m is None:
            break
        found.append(m)
    if expected is not None and len(found) != expected:
        raise MountFailed(f"Overlay '{name}' is mounted without a state record, and "
                          f"{len(found)} of its {expected} layer files are mounted; leaving "
                          "it as it is.")
    for m in found:
        if not m.source.startswith("/dev/loop") or "ro" not in m.options:
            raise MountFailed(f"Overlay '{name}': '{m.target}' is not a read-only layer file "
                              "on a loop device; leaving it as it is.")
    return found


def _layer(host: Host, m: MountInfo, name: str) -> Layer:
    path = host.images.loop_backing(m.source) or ""
    info = host.images.open_image(path, None)
    try:
        return Layer(path=info.path, dev=info.dev, ino=info.ino, fstype=m.fstype,
                     loop_device=m.source)
    finally:
        host.images.close_image(info)
