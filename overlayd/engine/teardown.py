"""Teardown (Discard): unmount the overlay, the image (if no other overlay uses it) and the
upper (lazily with FORCE), and remove the mount directories. All or nothing without
FORCE: a busy overlay raises OverlayBusy and nothing changes; a layer found busy once the
overlay is unmounted gets the overlay mounted back (the layers are still there) and
OverlayBusy with the holders. Only when that remount fails is the overlay down
(``Stopped.merged_down``: the manager makes it FAILED)."""

from __future__ import annotations

from dataclasses import dataclass

from overlayd.engine import steps
from overlayd.errors import OverlayBusy, OverlaydError, describe_holders
from overlayd.host.ports import Host
from overlayd.layout import Layout
from overlayd.model import LowerKind, Overlay


@dataclass
class Stopped:
    """Teardown stopped part-way: ERROR says why; MERGED_DOWN, whether the overlay is
    already gone from its mount point (then the overlay is FAILED, not ACTIVE)."""

    error: OverlaydError
    merged_down: bool


def run(host: Host, rec: Overlay, layout: Layout, *, force: bool,
        drop_lower: bool = True, release_lock: bool | None = None) -> Stopped | None:
    """DROP_LOWER: this overlay is the last user of its image mount; RELEASE_LOCK (by
    default the same): the last of its image file (overlays of other partitions of the
    file still read it under the file's one lock)."""
    if release_lock is None:
        release_lock = drop_lower
    try:
        was_up = steps.unmount_merged(host, rec, layout)
    except OverlayBusy as e:
        if not force:
            return Stopped(OverlayBusy(
                f"Overlay '{rec.name}' is busy: in use by {describe_holders(e.holders)}. Close "
                "those files or discard with force to detach it anyway.", e.holders), False)
        steps.unmount_merged(host, rec, layout, lazy=True)
        was_up = True
    except OverlaydError as e:
        return Stopped(e, False)
    has_image = rec.image_kind is not LowerKind.DIRECTORY
    # The image first: if it is busy the upper (the writes) is still whole, so the
    # overlay goes back up as it was.
    lower_down = False
    try:
        if has_image and (drop_lower or not rec.lowers[0].shared):
            steps.drop_lower(host, rec, layout, lazy=force)
            lower_down = True
        host.upper.unmake(rec.name, str(layout.upper_mount), rec.upper, lazy=force)
    except OverlayBusy as e:
        return _put_back(host, rec, layout, was_up, lower_down, e)
    except OverlaydError as e:
        return Stopped(e, was_up)
    try:
        # The layer files' mounts (issue 14): private, read-only, and used by nothing but
        # the overlay, which is gone; detached so that a copy elsewhere cannot stop us.
        steps.drop_layers(host, layout, lazy=True)
        steps.remove_dirs(host, rec, layout)
    except OverlaydError as e:
        return Stopped(e, True)
    # A zram upper another mount namespace held is let go once its mount points are
    # removed (the kernel detaches the copies there): remove it now if so, else later.
    host.upper.collect(str(layout.base.parent), wait=1.0)
    if has_image and release_lock:
        host.locks.release(rec.lowers[0].dev, rec.lowers[0].ino)
    return None


def _put_back(host: Host, rec: Overlay, layout: Layout, was_up: bool, lower_down: bool,
              busy: OverlayBusy) -> Stopped:
    """A layer is busy: mount back what was unmounted (the image, the overlay), so that the
    overlay is as it was, and say who holds the layer."""
    error = OverlayBusy(
        f"Overlay '{rec.name}' cannot be discarded: its layers are in use by "
        f"{describe_holders(busy.holders)}. It is mounted again as it was; close those "
        "files, or discard with force.", busy.holders)
    try:
        if lower_down:
            lower = rec.lowers[0]
            target = steps.lower_dir(rec, layout)
            if host.files.path_kind(target) == "missing":
                host.files.make_dir(target, 0o755)
            info = host.images.reopen_image(lower.image, lower.dev, lower.ino, writable=False)
            try:
                steps.mount_lower(host, rec, layout, info,
                                  steps.driver_for(host, rec.fstype), read_only=True)
            finally:
                host.images.close_image(info)
        if was_up:
            steps.mount_merged_checked(host, rec, layout)
    except OverlaydError as e:
        error.message = (f"Overlay '{rec.name}' was unmounted, but its layers are in use by "
                         f"{describe_holders(busy.holders)}, and it could not be mounted "
                         f"again ({e}). Close those files and discard again, or discard "
                         "with force.")
        error.args = (error.message,)
        return Stopped(error, True)
    return Stopped(error, False)
