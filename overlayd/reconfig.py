"""Reconfigure: which settings of a new spec differ from a live overlay, and which of
those can change while it is mounted (pure: no I/O).

``systemctl reload overlayd@NAME`` re-reads NAME.overlay and asks the daemon to apply it
(``Manager.Reconfigure``), as reload means everywhere else in systemd: what can change
live changes, what cannot is named, never silently ignored. Only the tmpfs's size can
change live (a remount with the new size); a zram device's size is fixed once set (the
kernel takes ``disksize`` only on a reset device), and the image, the mount point, the
layers, the partition, the mount options, the engine and the upper's kind are what the
mounts are made of.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from overlayd.model import MergeEngine, Overlay, UpperKind

# The settings that change while the overlay is mounted (a tmpfs upper only); the others
# are fixed, each for its reason.
LIVE_KEYS = ("size",)
FIXED_WHY: dict[str, str] = {
    "image": "the image is the overlay's lower layer; stop and start the overlay to use "
             "another",
    "fstype": "the image is mounted already",
    "mountpoint": "the overlay is mounted at its mount point; stop and start it to move it",
    "mount_options": "the options of the merged mount are fixed while it is mounted (the "
                     "kernel pins them)",
    "layers": "the layer stack changes by a commit to a layer, Squash or Revert, or by "
              "stopping and starting the overlay",
    "upper": "the writes live where they were made; stop and start the overlay to move them",
    "compressor": "a zram device's compressor is set before it holds data",
    "engine": "the merged view is mounted by its engine; stop and start the overlay to "
              "change it",
    "partition": "the image's partition is the overlay's lower layer; stop and start the "
                 "overlay to use another",
}
ZRAM_SIZE_WHY = ("a zram device's size cannot change while it holds the writes (the kernel "
                 "sets disksize only on an empty device); stop and start the overlay for the "
                 "new size")


@dataclass(frozen=True)
class Plan:
    """What a Reconfigure does: LIVE, the settings to change now (key -> new value);
    FIXED, those that differ but cannot change while the overlay is mounted (key -> why)."""

    live: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)

    @property
    def changes_nothing(self) -> bool:
        return not self.live and not self.fixed


def _norm(path: str) -> str:
    return os.path.normpath(path)  # pure: no symlink is resolved (the caller resolves)


def current(rec: Overlay) -> dict[str, Any]:
    """The live overlay's settings, keyed as a spec is."""
    return {
        "image": rec.image,
        "fstype": rec.fstype,
        "mountpoint": rec.mountpoint,
        "size": rec.size,
        "mount_options": frozenset(rec.mount_options),
        "layers": tuple(la.path for la in rec.layers),
        "upper": rec.upper.kind,
        "compressor": rec.upper.compressor,
        "engine": rec.engine,
        "partition": rec.lowers[0].partition,
    }


def _wanted(key: str, value: Any, forced_options: tuple[str, ...]) -> Any:
    """VALUE of KEY as ``current`` has it."""
    if key in ("image", "mountpoint"):
        return _norm(value)
    if key == "layers":
        return tuple(_norm(p) for p in value)
    if key == "mount_options":
        return frozenset((*value, *forced_options))
    if key == "upper":
        return UpperKind(value)
    if key == "engine":
        return MergeEngine(value)
    if key in ("compressor", "fstype"):
        return value or ""
    return value


def plan(rec: Overlay, settings: dict[str, Any], *,
         forced_options: tuple[str, ...] = ()) -> Plan:
    """Compare SETTINGS (the keys a caller gave, checked by the model) with REC. A key left
    out stays as it is. FORCED_OPTIONS: mount options the daemon adds whatever the spec
    says (nosuid, nodev for an overlay a non-root caller made), which are no difference."""
    now = current(rec)
    live: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for key, value in settings.items():
        if key not in now:
            raise KeyError(key)  # the bus decodes only the keys of a spec
        if key == "fstype" and not value:
            continue  # "detect it": whatever was detected is what it is
        if _wanted(key, value, forced_options) == now[key]:
            continue
        if key == "size":
            if rec.upper.kind is UpperKind.TMPFS:
                live[key] = value
            else:
                fixed[key] = ZRAM_SIZE_WHY
        else:
            fixed[key] = FIXED_WHY[key]
    return Plan(live=live, fixed=fixed)


def explain(p: Plan) -> str:
    """One sentence per fixed key, for the journal and overlayctl."""
    return " ".join(f"'{k}' differs but cannot change live: {why}." for k, why in
                    sorted(p.fixed.items()))
