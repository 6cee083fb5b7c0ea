"""Teardown (Discard): unmount the overlay, the upper and the image (lazily with FORCE),
and remove the mount directories. Without FORCE a busy overlay raises OverlayBusy and
nothing changes."""

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


def run(host: Host, rec: Overlay, layout: Layout, *, force: bool) -> Stopped | None:
    owns = host.merge.owns(rec.name)
    try:
        host.mounts.unmount(rec.mountpoint, owns)
    except OverlayBusy as e:
        if not force:
            return Stopped(OverlayBusy(
                f"Overlay '{rec.name}' is busy: in use by {describe_holders(e.holders)}. Close "
                "those files or discard with force to detach it anyway.", e.holders), False)
        host.mounts.unmount(rec.mountpoint, owns, lazy=True)
    except OverlaydError as e:
        return Stopped(e, False)
    try:
        host.mounts.unmount(str(layout.upper_mount), host.upper.owns(rec.name), lazy=force)
        if rec.image_kind is not LowerKind.DIRECTORY:
            host.mounts.unmount(str(layout.lower), steps.owns_lower(rec, layout), lazy=force)
        steps.remove_dirs(host, rec, layout)
    except OverlayBusy as e:
        return Stopped(OverlayBusy(
            f"Overlay '{rec.name}' was unmounted, but its layers are busy: in use by "
            f"{describe_holders(e.holders)}. Close those files, or discard with force.",
            e.holders), True)
    except OverlaydError as e:
        return Stopped(e, True)
    return None
