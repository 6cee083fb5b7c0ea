"""Pure checks of a Create request against the machine and the overlays that exist.

Each returns the decided value or raises an error whose message says what to do.
"""

from __future__ import annotations

from collections.abc import Iterable

from overlayd.config import DaemonConfig
from overlayd.errors import InvalidSpec, LimitExceeded, MountFailed
from overlayd.fstype import REFUSAL
from overlayd.layout import SOURCE_PREFIX, is_within
from overlayd.model import Overlay, OverlaySpec, format_size
from overlayd.mountinfo import MountInfo
from overlayd.overlayfs import PINNED

# ext2 and ext3 are served by the ext4 driver on most kernels (CONFIG_EXT4_USE_FOR_EXT2).
_DRIVER_FALLBACK = {"ext2": "ext4", "ext3": "ext4"}



def choose_size(spec: OverlaySpec, cfg: DaemonConfig, memory: int) -> int:
    limit = min(cfg.max_size or memory, memory)
    if spec.size is None:
        return min(cfg.default_size, limit)
    return check_size_limit(spec.size, cfg, memory)


def check_size_limit(size: int, cfg: DaemonConfig, memory: int) -> int:
    """SIZE, if the machine's memory and max_size allow it (Create and Reconfigure)."""
    limit = min(cfg.max_size or memory, memory)
    if size > memory:
        raise LimitExceeded(
            f"A size of {format_size(size)} for the writes is more than this machine's "
            f"memory ({format_size(memory)}); ask for less."
        )
    if size > limit:
        raise LimitExceeded(
            f"A size of {format_size(size)} is above the configured limit of "
            f"{format_size(limit)} (max_size in overlayd.conf)."
        )
    return size


def reserved_total(records: Iterable[Overlay]) -> int:
    """The RAM the overlays reserve for their writes: the sum of their uppers' sizes (a
    tmpfs's size, a zram device's disksize; boot overlays too). Layer files live on disk and
    count for nothing. The manager leaves the root overlay out (``reserved_total``)."""
    return sum(rec.upper.size for rec in records)


def check_total(asked: int, in_use: int, limit: int, *, name: str) -> None:
    """Overlay NAME may reserve ASKED bytes beside the IN_USE bytes the others reserve, under
    LIMIT (``DaemonConfig.total_limit``). For a resize, ASKED is the new size and IN_USE
    leaves the overlay's own size out."""
    if in_use + asked <= limit:
        return
    left = max(limit - in_use, 0)
    raise LimitExceeded(
        f"Overlay '{name}' would reserve {format_size(asked)} of RAM for its writes, but the "
        f"other overlays reserve {format_size(in_use)} already, and all may reserve at most "
        f"{format_size(limit)} together (max_total_size in overlayd.conf); "
        f"{format_size(left)} is left.")


def driver_for(fstype: str, kernel: frozenset[str]) -> str:
    """The kernel driver that mounts FSTYPE (ext2/ext3 through ext4 when need be)."""
    return fstype if fstype in kernel else _DRIVER_FALLBACK.get(fstype, fstype)


def choose_fstype(shown: str, requested: str | None, detected: str | None,
                  kernel: frozenset[str], *, partition: str = "") -> tuple[str, str]:
    """(the file system the image holds, the driver to mount it with). PARTITION: the
    image's partition they are about (as shown: 2, 'rootfs'), if one was asked for."""
    what = f"Partition {partition} of the image '{shown}'" if partition else \
        f"The image '{shown}'"
    field = "partition" if partition else "image"
    if detected in REFUSAL:
        raise InvalidSpec(f"{what} {REFUSAL[detected]}.", field)
    if detected is None and requested is None:
        raise InvalidSpec(
            f"{what} holds no file system overlayd recognizes (ext2/3/4, squashfs, "
            "erofs, iso9660, xfs, btrfs); if it does hold one, name it with 'fstype'.", field)
    if requested is not None and detected is not None and requested != detected \
            and _DRIVER_FALLBACK.get(detected) != requested:
        raise InvalidSpec(f"{what} holds {detected}, not {requested}.", "fstype")
    fstype = detected or requested or ""
    driver = driver_for(fstype, kernel)
    if driver not in kernel:
        raise InvalidSpec(f"{what} holds {fstype}, which this kernel cannot mount "
                          "(it is not in /proc/filesystems).", field)
    return fstype, driver


def check_outside_runtime_dir(path: str, cfg: DaemonConfig) -> None:
    """Only the mount root of overlayd's runtime directory takes mount points; the rest is
    its own layers and records."""
    if is_within(path, cfg.runtime_dir) and not is_within(path, cfg.mount_root_dir):
        raise InvalidSpec(f"The mount point '{path}' is inside overlayd's runtime directory "
                          f"'{cfg.runtime_dir}'.", "mountpoint")


def check_image_outside_runtime_dir(path: str, shown: str, cfg: DaemonConfig) -> None:
    """PATH, the image as the kernel resolved it, is none of overlayd's own layers: not an
    image mount, a live upper, a record or the runtime directory itself (the merged views
    below the mount root are the users' data, and may hold images)."""
    root = cfg.mount_root_dir
    if is_within(path, cfg.runtime_dir) and not (is_within(path, root)
                                                 and path.rstrip("/") != str(root)):
        raise InvalidSpec(f"The image '{shown}' is inside overlayd's runtime directory "
                          f"'{cfg.runtime_dir}', which holds its own layers.", "image")


def check_mountpoint(path: str, kind: str, *, is_default: bool, cfg: DaemonConfig,
                     mounts: Iterable[MountInfo]) -> None:
    """PATH is the resolved mount point; KIND is 'missing', 'directory' or 'other'; MOUNTS,
    the mounts that hold PATH (or all of them). The mount points of other overlays are
    ``claims.MountpointClaims``' to check."""
    mounts = list(mounts)
    if not is_default:
        if kind == "missing":
            raise InvalidSpec(f"The mount point '{path}' does not exist; create the directory "
                              "first.", "mountpoint")
        if kind != "directory":
            raise InvalidSpec(f"The mount point '{path}' is not a directory.", "mountpoint")
        check_outside_runtime_dir(path, cfg)
    for m in mounts:
        if m.target == path:
            raise InvalidSpec(f"'{path}' is already a mount point ({m.fstype} from {m.source}); "
                              "overlayd does not mount over other mounts.", "mountpoint")
        if m.source.startswith(SOURCE_PREFIX) and m.fstype == "overlay" \
                and is_within(path, m.target):
            raise InvalidSpec(f"The mount point '{path}' is inside the overlay mounted at "
                              f"'{m.target}'; overlays cannot be nested.", "mountpoint")


# What every overlay made for a non-root caller gets, whatever it asked for.
USER_FORCED_OPTIONS = ("nosuid", "nodev")


def user_mount_options(options: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*options, *USER_FORCED_OPTIONS)))


def check_user_mountpoint(path: str, uid: int, user: str, cfg: DaemonConfig) -> None:
    """A non-root caller mounts only strictly below the mount root or its own roots."""
    roots = [str(cfg.mount_root_dir)] + [r.replace("$USER", user) for r in cfg.user_mount_roots]
    if any(is_within(path, r) and path.rstrip("/") != r.rstrip("/") for r in roots):
        return
    raise InvalidSpec(f"As uid {uid} you may mount overlays only below "
                      + " or ".join(f"'{r}'" for r in roots) + f", not at '{path}'.",
                      "mountpoint")


def check_overlay_options(mounts: Iterable[MountInfo], target: str, source: str) -> None:
    """Read the new overlay back from mountinfo: ours, and every pinned option off."""
    found = [m for m in mounts if m.target == target]
    if not found or found[-1].fstype != "overlay" or found[-1].source != source:
        raise MountFailed(f"The overlay did not appear at '{target}' after mounting it.")
    m = found[-1]
    for key, want in PINNED:
        got = m.super_option(key)
        if got is not None and got != want:  # absent: the kernel's default, which we overrode
            raise MountFailed(f"The kernel mounted the overlay at '{target}' with {key}={got}; "
                              f"overlayd needs {key}={want}.")
