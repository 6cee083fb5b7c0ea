"""Diff: what the upper holds, against the lower."""

from __future__ import annotations

from overlayd.engine import steps
from overlayd.host.ports import Host
from overlayd.layout import Layout
from overlayd.model import LowerKind, Overlay


def run(host: Host, rec: Overlay, layout: Layout) -> list[tuple[str, str]]:
    """(path, kind) of every change in the upper, against the lower (a directory lower is
    opened and verified first, as for Commit)."""
    if rec.image_kind is not LowerKind.DIRECTORY:
        return host.layers.diff(str(layout.upper), steps.lower_dir(rec, layout))
    dir_fd = host.images.open_lower_dir(rec.image, rec.lowers[0].dev, rec.lowers[0].ino)
    try:
        return host.layers.diff(str(layout.upper), steps.lower_sources(rec, layout, dir_fd)[0])
    finally:
        host.images.close_fd(dir_fd)
