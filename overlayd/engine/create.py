"""Create, in two halves around the first record the manager saves:

``prepare`` decides everything and opens what it needs (the image, the mount point) but
changes nothing; ``build`` makes the layers and the mount, undoing every completed step in
reverse when a later one fails; ``release`` closes what ``prepare`` opened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from overlayd import checks
from overlayd.config import DaemonConfig
from overlayd.engine import steps
from overlayd.errors import ImageInUse, InvalidSpec, LimitExceeded, MountFailed, describe_users
from overlayd.host.ports import Host, ImageInfo
from overlayd.layout import Layout
from overlayd.model import (
    Layer,
    Lower,
    LowerKind,
    Merged,
    Overlay,
    OverlaySpec,
    OverlayState,
    Upper,
    show_partition,
)
from overlayd.rollback import Rollback

log = logging.getLogger(__name__)

LAYER_FSTYPES = ("erofs", "squashfs")
KERNEL_MAX_LOWERS = 500  # overlayfs' OVL_MAX_STACK


@dataclass
class Prepared:
    record: Overlay  # in state CREATING: what the manager saves before build
    layout: Layout
    info: ImageInfo  # the image, open
    driver: str  # the kernel driver that mounts it
    mountpoint_fd: int | None  # the caller's mount point, open (None: the default one)


def prepare(host: Host, cfg: DaemonConfig, spec: OverlaySpec,
            claim: Callable[[str], None], *, owner_uid: int, now_usec: int) -> Prepared:
    """CLAIM(mount point) takes the mount point among the overlays (the manager's
    ``MountpointClaims``); it raises if another overlay has it, or nests with it."""
    size = checks.choose_size(spec, cfg, host.system.memory_total())
    rb = Rollback()
    # A caller's mount point is opened once; the checks and the mount use that directory,
    # so no symlink swapped in between can move the mount (non-root: no symlinks at all).
    is_default = spec.mountpoint is None
    mp_fd: int | None = None
    try:
        if is_default:
            mountpoint = cfg.default_mountpoint(spec.name)
        else:
            mp_fd, mountpoint = host.mounts.open_mountpoint(spec.mountpoint or "",
                                                           follow_symlinks=owner_uid == 0)
            rb.push("close the mount point", host.images.close_fd, mp_fd)
        options = spec.mount_options
        if owner_uid != 0:
            checks.check_user_mountpoint(mountpoint, owner_uid,
                                         host.system.user_name(owner_uid), cfg)
            options = checks.user_mount_options(options)
        kind = host.files.path_kind(mountpoint) if is_default else "directory"
        # Only the mounts that hold the mount point (the default one may not exist yet):
        # the cost does not grow with the number of overlays or other mounts.
        nearest = mountpoint if kind != "missing" else os.path.dirname(mountpoint)
        claim(mountpoint)  # first: another overlay's name says more than the mount table
        checks.check_mountpoint(mountpoint, kind, is_default=is_default, cfg=cfg,
                                mounts=host.mounts.containing(nearest))
        if not is_default and host.files.has_entries(mountpoint):
            # what is there is hidden while the overlay is mounted: root may, as systemd
            # mounts over a non-empty directory with a warning; nobody else
            if owner_uid != 0:
                raise InvalidSpec(f"The mount point '{mountpoint}' is not empty; as uid "
                                  f"{owner_uid} you may mount only on an empty directory.",
                                  "mountpoint")
            log.warning("The mount point '%s' is not empty; what it holds is hidden while "
                        "overlay '%s' is mounted.", mountpoint, spec.name,
                        extra={"OVERLAYD_NAME": spec.name, "OVERLAYD_MOUNTPOINT": mountpoint})
        info = host.images.open_image(spec.image, spec.image_fd, as_uid=owner_uid)
        rb.push("close the image", host.images.close_image, info)
        shown = spec.image or info.path
        if spec.partition is not None:  # the same fd, narrowed to the partition
            info = host.images.partition(info, spec.partition, shown)
        checks.check_image_outside_runtime_dir(info.path, shown, cfg)
        if info.kind is LowerKind.DIRECTORY:
            fstype, driver = "", ""
            if spec.fstype is not None:
                raise InvalidSpec(f"The image '{shown}' is a directory; it has no 'fstype'.",
                                  "fstype")
        else:
            fstype, driver = checks.choose_fstype(shown, spec.fstype, info.detected_fstype,
                                                  host.system.kernel_filesystems(),
                                                  partition=show_partition(spec.partition))
        layers = open_layers(host, cfg, spec, owner_uid)
    except BaseException:
        rb.unwind()
        raise
    rec = Overlay(
        name=spec.name, state=OverlayState.CREATING,
        lowers=(Lower(kind=info.kind, image=info.path, dev=info.dev, ino=info.ino,
                      fstype=fstype, shared=info.kind is not LowerKind.DIRECTORY,
                      partition=info.partition, offset=info.offset,
                      sizelimit=info.sizelimit),),
        upper=host.upper.plan(Upper(kind=spec.upper, size=size,
                                     compressor=spec.compressor or "")),
        merged=Merged(mountpoint=mountpoint, created=is_default, options=options,
                      engine=spec.engine),
        owner_uid=owner_uid, created_usec=now_usec, layers=layers,
    )
    return Prepared(rec, Layout.for_overlay(cfg.runtime_dir, spec.name), info, driver, mp_fd)


def build(host: Host, cfg: DaemonConfig, p: Prepared,
          finish: Callable[[Overlay], None], *, first_user: bool = True,
          note: Callable[[Overlay], None] | None = None) -> Overlay:
    """Make the lower, the upper and the merged mount, then FINISH(the record as built):
    the manager's last step (saving it ACTIVE), inside the undo scope. The record as
    built (still CREATING). On failure nothing of it is left. FIRST_USER: no other overlay
    uses the image (the caller holds the image's lock): take its lock and mount it; else
    the shared lower is there already. NOTE(record): save it, once the upper is made of
    something recovery must find (a device)."""
    rec, layout = p.record, p.layout
    rb = Rollback()
    try:
        if rec.image_kind is not LowerKind.DIRECTORY:
            lower = rec.lowers[0]
            if first_user:
                host.locks.hold(lower.image, lower.dev, lower.ino, p.info.fd)
                rb.push("unlock the image", host.locks.release, lower.dev, lower.ino)
            device = _lower(host, rec, p, rb)
            rec = rec.evolve(lowers=(rec.lowers[0].model_copy(update={"loop_device": device}),
                                     *rec.lowers[1:]))
        if rec.layers:
            rb.push("unmount the layers", lambda: steps.drop_layers(host, layout, lazy=True))
            rec = steps.ensure_layers(host, rec, layout)
        _make_dir(host, rb, str(layout.upper_mount), 0o700)
        rec = rec.evolve(upper=host.upper.make(rec.name, str(layout.upper_mount), rec.upper))
        rb.push(f"unmount the {rec.upper.kind}", host.upper.unmake, rec.name,
                str(layout.upper_mount), rec.upper)
        if note is not None and rec.upper != p.record.upper:
            note(rec)  # what the upper is made of (a device), before anything more
        host.layers.prepare_upper(steps.stack_sources(rec, layout)[0], str(layout.upper),
                                  str(layout.work))
        if rec.merged.created:
            if host.files.path_kind(str(cfg.mount_root_dir)) == "missing":
                host.files.make_dir(str(cfg.mount_root_dir), 0o755)  # shared; never removed
            if host.files.path_kind(rec.mountpoint) == "missing":
                _make_dir(host, rb, rec.mountpoint, 0o755)
        steps.mount_merged(host, rec, layout, target_fd=p.mountpoint_fd)
        built = rec
        rb.push("unmount the overlay", lambda: steps.unmount_merged(host, built, layout))
        host.merge.verify(rec.name, rec.mountpoint, rec.engine)
        finish(rec)
    except BaseException:
        rb.unwind()
        raise
    return rec


def open_layers(host: Host, cfg: DaemonConfig, spec: OverlaySpec,
                owner_uid: int) -> tuple[Layer, ...]:
    """The spec's layer files (issue 14), lowest first: each opened (as the caller), an
    erofs or squashfs image, within the limits; checked again by identity when mounted."""
    if len(spec.layers) > cfg.max_layers:
        raise LimitExceeded(f"{len(spec.layers)} layer files are more than the "
                            f"{cfg.max_layers} allowed (max_layers in overlayd.conf).")
    if len(spec.layers) + 1 > KERNEL_MAX_LOWERS:
        raise LimitExceeded(f"The kernel stacks at most {KERNEL_MAX_LOWERS} lower layers.")
    layers = []
    for path in spec.layers:
        info = host.images.open_image(path, None, as_uid=owner_uid)
        try:
            if info.kind is not LowerKind.FILE or info.detected_fstype not in LAYER_FSTYPES:
                raise InvalidSpec(f"The layer '{path}' is not an erofs or squashfs image "
                                  "file.", "layers")
            checks.check_image_outside_runtime_dir(info.path, path, cfg)
            layers.append(Layer(path=info.path, dev=info.dev, ino=info.ino,
                                fstype=info.detected_fstype))
        finally:
            host.images.close_image(info)
    return tuple(layers)


def _lower(host: Host, rec: Overlay, p: Prepared, rb: Rollback) -> str:
    """The image mounted read-only; a mount the kernel refuses because someone writes
    the image (a journal to replay: "Read-only file system") is ImageInUse saying where."""
    try:
        return steps.ensure_lower(host, rec, p.layout, p.info, p.driver, rb)
    except MountFailed as e:
        lower = rec.lowers[0]
        writers = host.images.users(lower.image, lower.dev, lower.ino, own_devices=set(),
                                    own_mounts=set(), writers_only=True)
        if writers:
            raise ImageInUse(f"The image '{lower.image}' is in use for writing by "
                             f"{describe_users(writers)}; an overlay of it would read a "
                             "file system that changes under it. Unmount it there first.",
                             writers) from None
        raise e from None


def release(host: Host, p: Prepared) -> None:
    host.images.close_image(p.info)
    if p.mountpoint_fd is not None:
        host.images.close_fd(p.mountpoint_fd)


def _make_dir(host: Host, rb: Rollback, path: str, mode: int) -> None:
    host.files.make_dir(path, mode)
    rb.push(f"remove '{path}'", host.files.remove_dir, path)
