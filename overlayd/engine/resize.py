"""Resize: a new limit for the live tmpfs that takes an overlay's writes (Reconfigure's
one live change, see reconfig.py). The writes stay where they are; nothing is unmounted."""

from __future__ import annotations

from overlayd import checks
from overlayd.config import DaemonConfig
from overlayd.errors import InvalidSpec
from overlayd.host.ports import Host
from overlayd.layout import Layout
from overlayd.model import Overlay, Upper, format_size


def run(host: Host, cfg: DaemonConfig, rec: Overlay, layout: Layout, size: int) -> Upper:
    """The upper of REC resized to SIZE: within max_size and the machine's memory, and not
    below what the writes use now (InvalidSpec saying how much they use)."""
    checks.check_size_limit(size, cfg, host.system.memory_total())
    target = str(layout.upper_mount)
    used = host.upper.usage(target, rec.upper).used
    if size < used:
        raise InvalidSpec(
            f"Cannot make the RAM for the writes of overlay '{rec.name}' {format_size(size)}: "
            f"its writes use {format_size(used)} already. Ask for at least that much, or "
            "commit or discard the writes first.", field="size")
    return host.upper.resize(rec.name, target, rec.upper, size)
