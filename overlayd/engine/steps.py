"""Steps the procedures share: mounting a lower and the merged view, ownership rules."""

from __future__ import annotations

import logging

from overlayd import checks
from overlayd.errors import MountFailed, OverlaydError
from overlayd.host.ports import Host, ImageInfo, Loop, Owned
from overlayd.layout import Layout
from overlayd.model import Layer, LowerKind, MergeEngine, Overlay
from overlayd.mountinfo import MountInfo
from overlayd.rollback import Rollback

log = logging.getLogger(__name__)


def lower_dir(rec: Overlay, layout: Layout) -> str:
    """Where REC's image is mounted: the shared lower of its image, or its own directory."""
    return str(layout.lower_of(rec.lowers[0]))


def owns_lower(rec: Overlay, layout: Layout) -> Owned:
    """The lower mount sits in our private directory (the shared one of the image, or the
    overlay's own) and comes from a loop device (or the block device itself). A shared
    lower is unmounted only by the last overlay of its image (``SharedLowers``)."""
    target = lower_dir(rec, layout)
    kind = rec.image_kind

    def check(m: MountInfo) -> bool:
        if m.target != target:
            return False
        return kind is LowerKind.BLOCK or m.source.startswith("/dev/loop")
    return check


def via_loop(rec: Overlay) -> bool:
    """The image is mounted from a loop device: a file, or one partition of a block device
    (a whole block device is mounted as it is)."""
    lower = rec.lowers[0]
    return lower.kind is LowerKind.FILE or (lower.kind is LowerKind.BLOCK and lower.partitioned)


def attach(host: Host, rec: Overlay, info: ImageInfo, *, read_only: bool) -> Loop:
    """A loop device of REC's image (of its partition: the recorded offset and size)."""
    lower = rec.lowers[0]
    return host.images.attach_loop(info, read_only=read_only, name=info.path,
                                   offset=lower.offset, sizelimit=lower.sizelimit)


def lower_matches(host: Host, rec: Overlay, m: MountInfo) -> bool:
    """The image mount M shows what REC reads: for a partition, its loop device has the
    recorded offset and size (a mount of another part of the file is not it)."""
    lower = rec.lowers[0]
    if not lower.partitioned:
        return True
    return host.images.loop_window(m.source) == lower.window


def lower_sources(rec: Overlay, layout: Layout, dir_fd: int | None = None) -> list[str]:
    """The overlay's lowerdirs, top first: our image mount, or the directory lower (through
    DIR_FD, opened and verified by open_lower_dir, when the path must not be trusted)."""
    if rec.image_kind is not LowerKind.DIRECTORY:
        return [lower_dir(rec, layout)]
    return [f"/proc/self/fd/{dir_fd}" if dir_fd is not None else rec.image]


def stack_sources(rec: Overlay, layout: Layout, dir_fd: int | None = None) -> list[str]:
    """Every lowerdir of the merged mount, top first: the layer files' mounts (the newest
    on top), then the image (issue 14)."""
    layers = [str(layout.layer_mount(i)) for i in reversed(range(len(rec.layers)))]
    return layers + lower_sources(rec, layout, dir_fd)


def owns_layer(layout: Layout, index: int) -> Owned:
    """A layer mount sits in the overlay's private directory, from a loop device."""
    target = str(layout.layer_mount(index))
    return lambda m: m.target == target and m.source.startswith("/dev/loop")


def mount_layer(host: Host, layer: Layer, layout: Layout, index: int) -> str:
    """Mount the layer file LAYER read-only at its place (made if missing) through a
    read-only loop device (autoclear); the loop device. Checked to be the same file."""
    target = str(layout.layer_mount(index))
    for d in (str(layout.layer_mounts), target):
        if host.files.path_kind(d) == "missing":
            host.files.make_dir(d, 0o700)
    info = host.images.open_image(layer.path, None)
    try:
        if layer.dev and (info.dev, info.ino) != (layer.dev, layer.ino):
            raise MountFailed(f"The layer file '{layer.path}' was replaced; refusing to "
                              "stack another file in its place.")
        loop = host.images.attach_loop(info, read_only=True, name=info.path)
        try:
            host.mounts.mount_fs(loop.path, target, layer.fstype or "erofs", read_only=True)
        finally:
            loop.release()
        return loop.path
    finally:
        host.images.close_image(info)


def ensure_layers(host: Host, rec: Overlay, layout: Layout) -> Overlay:
    """REC with every layer file mounted (those not mounted yet are mounted now)."""
    layers = list(rec.layers)
    for i, layer in enumerate(rec.layers):
        target = str(layout.layer_mount(i))
        found = host.mounts.at(target)
        if found is not None and owns_layer(layout, i)(found):
            if host.images.loop_backing(found.source) == layer.path:
                layers[i] = layer.model_copy(update={"loop_device": found.source})
                continue
            # Another layer file is mounted there (a squash or revert was killed before
            # it moved the mounts): the record says which one belongs.
            host.mounts.unmount(target, owns_layer(layout, i), lazy=True)
        layers[i] = layer.model_copy(update={"loop_device": mount_layer(host, layer, layout, i)})
    drop_layers(host, layout, lazy=True, keep=len(rec.layers))  # mounts above the stack
    return rec.evolve(layers=tuple(layers))


def drop_layers(host: Host, layout: Layout, *, lazy: bool, keep: int = 0) -> None:
    """Unmount the layer mounts from index KEEP up, and remove their directories (all of
    them and the parent with KEEP 0). What is there is asked of the directory, so a
    mount a killed commit made before its record named it goes too."""
    parent = str(layout.layer_mounts)
    if host.files.path_kind(parent) != "directory":
        return
    for entry in host.files.list_dir(parent):
        if not entry.isdigit() or int(entry) < keep:
            continue
        index = int(entry)
        host.mounts.unmount(str(layout.layer_mount(index)), owns_layer(layout, index),
                            lazy=lazy)
        host.files.remove_dir(str(layout.layer_mount(index)))
    if keep == 0:
        host.files.remove_dir(parent)


def driver_for(host: Host, fstype: str) -> str:
    return checks.driver_for(fstype, host.system.kernel_filesystems())


def tops(mounts: list[MountInfo]) -> dict[str, MountInfo]:
    """The top mount at each mount point of a mount table (later mounts cover earlier)."""
    return {m.target: m for m in mounts}


def mount_lower(host: Host, rec: Overlay, layout: Layout, info: ImageInfo, driver: str, *,
                read_only: bool, rb: Rollback | None = None) -> str:
    """Mount the image at the lower directory: through a new loop device for a file
    (read-only or read-write as asked; autoclear detaches it when the mount goes), directly
    for a block device. The loop device's path, or "" for a block device."""
    target = lower_dir(rec, layout)
    device = ""
    if not via_loop(rec):
        host.mounts.mount_fs(info.path, target, driver, read_only=read_only)
    else:
        loop = attach(host, rec, info, read_only=read_only)
        try:
            host.mounts.mount_fs(loop.path, target, driver, read_only=read_only)
        finally:
            loop.release()  # the mount holds the device now; autoclear frees it after
        device = loop.path
    if rb is not None:
        rb.push("unmount the image", host.mounts.unmount, target, owns_lower(rec, layout))
    return device


def ensure_lower(host: Host, rec: Overlay, layout: Layout, info: ImageInfo, driver: str,
                 rb: Rollback) -> str:
    """The image mounted read-only where REC wants it: a shared lower already mounted by
    another overlay of the image is reused as it is (the caller holds the image's lock);
    else the directory is made and the image mounted, both undone by RB. The device."""
    target = lower_dir(rec, layout)
    if rec.lowers[0].shared:
        found = host.mounts.at(target)
        if found is not None and owns_lower(rec, layout)(found) and "ro" in found.options \
                and lower_matches(host, rec, found):
            return found.source if via_loop(rec) else ""
        if host.files.path_kind(str(layout.shared_lowers)) == "missing":
            host.files.make_dir(str(layout.shared_lowers), 0o700)  # shared; never removed
    if host.files.path_kind(target) == "missing":
        host.files.make_dir(target, 0o755)
        rb.push(f"remove '{target}'", host.files.remove_dir, target)
    return mount_lower(host, rec, layout, info, driver, read_only=True, rb=rb)


def drop_lower(host: Host, rec: Overlay, layout: Layout, *, lazy: bool) -> None:
    """Unmount REC's image mount and remove its directory (the last user's job)."""
    target = lower_dir(rec, layout)
    host.mounts.unmount(target, owns_lower(rec, layout), lazy=lazy)
    if rec.lowers[0].shared:
        host.files.remove_dir(target)


def open_lower_detached(host: Host, rec: Overlay, info: ImageInfo, driver: str) -> int:
    """The image mounted read-write nowhere (an fd): what Commit writes through."""
    if not via_loop(rec):
        return host.mounts.open_detached(info.path, driver)
    loop = attach(host, rec, info, read_only=False)
    try:
        return host.mounts.open_detached(loop.path, driver)
    finally:
        loop.release()  # the mount holds the device now; autoclear frees it after


def mount_merged(host: Host, rec: Overlay, layout: Layout, dir_fd: int | None = None,
                 target_fd: int | None = None) -> None:
    host.merge.mount(rec.name, rec.mountpoint, lowers=stack_sources(rec, layout, dir_fd),
                     upper=str(layout.upper), work=str(layout.work),
                     options=rec.mount_options, target_fd=target_fd, engine=rec.engine)


def unmount_merged(host: Host, rec: Overlay, layout: Layout, *, lazy: bool = False) -> bool:
    """Unmount the merged view (if it is ours); a FUSE server then ends (settle): it holds
    the upper open until it does. False if nothing was mounted."""
    was_up = host.mounts.unmount(rec.mountpoint, host.merge.owns(rec.name), lazy=lazy)
    if rec.engine is MergeEngine.FUSE and not lazy:
        host.merge.settle(rec.name, str(layout.upper))
    return was_up


def mount_merged_checked(host: Host, rec: Overlay, layout: Layout) -> None:
    """Mount the merged view (opening a directory lower safely first)."""
    if rec.image_kind is LowerKind.DIRECTORY:
        dir_fd = host.images.open_lower_dir(rec.image, rec.lowers[0].dev, rec.lowers[0].ino)
        try:
            mount_merged(host, rec, layout, dir_fd)
        finally:
            host.images.close_fd(dir_fd)
    else:
        mount_merged(host, rec, layout)


def unexpected(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "the tree of changes is nested too deeply to walk."
    if isinstance(e, OSError):
        return f"{e.strerror or e}."
    return f"an unexpected {type(e).__name__}."


def remove_dirs(host: Host, rec: Overlay, layout: Layout) -> None:
    """The mount point (if overlayd made it) and the per-overlay mount directories; the
    record and the overlay's own directory are the state store's to remove."""
    if rec.merged.created:
        try:
            host.files.remove_dir(rec.mountpoint)
        except OverlaydError as e:  # ours but not essential; never fail a discard for it
            log.warning("Cannot remove the mount point '%s': %s, ignoring.", rec.mountpoint, e)
    if not rec.lowers[0].shared:
        host.files.remove_dir(str(layout.lower))
    host.files.remove_dir(str(layout.upper_mount))
