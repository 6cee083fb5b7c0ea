"""Squash and Revert (issue 14): change the stack of layer files under an overlay.

Squash merges the layer files into one (``LayerFiles.squash``: composed on disk, made by
the tool, fsynced, renamed); the writes in RAM stay where they are, in the same upper, and
mean the same over the new stack (the upper names only paths: with the pinned options
nothing in it refers to a lower's inodes). Revert drops the topmost layer file (the
user's undo); the writes in RAM must be committed first, or thrown away with it
(option ``discard``).

What a kill -9 after each step leaves (``recover.py``):
- Squash: the record in phase LAYERING names the file being made: until the record names
  it as the stack, recovery removes it and mounts the overlay again over the old stack
  and the same upper. Once the record says the stack is that one file (phase NONE),
  recovery mounts it (``steps.ensure_layers`` puts the right file at each place) and
  the overlay over the same upper. The old layer files overlayd made are removed last;
  a kill before that leaves them unstacked, never in use.
- Revert: the record names the shorter stack first (phase APPLIED when the writes go
  too: recovery then starts a fresh upper), then the mounts follow.
Layer files overlayd did not make (the spec's ``layers``) are never removed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from overlayd.config import DaemonConfig
from overlayd.engine import steps
from overlayd.errors import (
    Cancelled,
    CommitFailed,
    OverlayBusy,
    OverlaydError,
    describe_holders,
)
from overlayd.host.ports import Applied, Host
from overlayd.jobs import CancelToken
from overlayd.layout import Layout, is_within
from overlayd.model import CommitPhase, Layer, LayerFormat, Overlay

# checkpoint(phase, the record's layers, the pending file, the retired files)
Checkpoint = Callable[[CommitPhase, tuple[Layer, ...], str, tuple[str, ...]], None]


@dataclass
class Restacked:
    """What a squash or a revert did. ERROR set: the stack is as it was (REMOUNTED says
    whether the overlay is mounted again)."""

    name: str
    what: str  # "squash" | "revert"
    layers: tuple[Layer, ...]
    applied: Applied | None = None
    error: OverlaydError | None = None
    remount_problems: list[str] = field(default_factory=list)
    free_old_upper: Callable[[], None] = lambda: None

    @property
    def remounted(self) -> bool:
        return not self.remount_problems

    def outcome_error(self) -> OverlaydError | None:
        problems = "; ".join(self.remount_problems)
        if self.error is not None:
            tail = (f" The overlay could not be mounted again ({problems})." if problems else
                    " Nothing was lost: the layers and the writes in RAM are as they were, "
                    "and the overlay is mounted again.")
            if isinstance(self.error, Cancelled):
                return Cancelled(f"The {self.what} of overlay '{self.name}' was cancelled."
                                 + tail)
            return CommitFailed(f"The {self.what} of overlay '{self.name}' failed: "
                                f"{self.error}" + tail)
        if problems:
            return CommitFailed(f"The layers of overlay '{self.name}' were changed, but the "
                                f"overlay could not be mounted again: {problems}.")
        return None


def ours(cfg: DaemonConfig, name: str, layer: Layer) -> bool:
    """A layer file overlayd made for NAME (in its layer directory): it may remove it."""
    return is_within(layer.path, cfg.layers_of(name)) and \
        os.path.dirname(layer.path) == str(cfg.layers_of(name))


def refuse_into_image(rec: Overlay) -> None:
    if not rec.layers:
        raise CommitFailed(f"Overlay '{rec.name}' stacks no layer file above its image: "
                           "there is nothing to squash into it. Nothing was changed.")


def refuse_squash(rec: Overlay) -> None:
    if len(rec.layers) < 2:
        raise CommitFailed(f"Overlay '{rec.name}' stacks {len(rec.layers)} layer file(s) "
                           "above its image: there is nothing to squash. Nothing was "
                           "changed.")


def squash(host: Host, rec: Overlay, layout: Layout, cfg: DaemonConfig, fmt: LayerFormat,
           checkpoint: Checkpoint, *, cancel: CancelToken | None = None) -> Restacked:
    refuse_squash(rec)
    if cancel is not None and cancel.asked:
        raise Cancelled(f"The squash of overlay '{rec.name}' was cancelled before it started; "
                        "nothing changed.")
    directory = str(cfg.layers_of(rec.name))
    host.layerfiles.prepare_dir(directory)
    path = host.layerfiles.next_path(directory, fmt.value)
    checkpoint(CommitPhase.LAYERING, rec.layers, path, ())
    _unmount_merged(host, rec, layout)
    out = Restacked(rec.name, "squash", rec.layers)
    retired = tuple(la.path for la in rec.layers if ours(cfg, rec.name, la))
    try:
        sources = [str(layout.layer_mount(i)) for i in range(len(rec.layers))]
        out.applied = host.layerfiles.squash(
            sources, path, fmt.value, None if cancel is None else (lambda: cancel.asked))
        if cancel is not None:
            cancel.seal()
        info = host.images.open_image(path, None)
        host.images.close_image(info)
        layer = Layer(path=path, dev=info.dev, ino=info.ino, fstype=fmt.value)
        checkpoint(CommitPhase.NONE, (layer,), "", retired)
    except Exception as e:
        out.error = e if isinstance(e, OverlaydError) else CommitFailed(steps.unexpected(e))
        try:
            host.layerfiles.remove(path)
        except OverlaydError as e2:
            out.remount_problems.append(f"remove the unfinished layer: {e2}")
        _remount(host, rec, layout, out)
        return out
    old = rec.layers
    out.layers = (layer,)
    _remount(host, rec.evolve(layers=out.layers), layout, out, fresh_mounts=True)
    del old
    _retire(host, retired, out)
    return out


def _retire(host: Host, retired: tuple[str, ...], out: Restacked) -> None:
    """Remove the layer files taken out of the stack (recovery does it after a kill)."""
    for path in retired:
        try:
            host.layerfiles.remove(path)
        except OverlaydError as e:  # unstacked, harmless: said, not fatal
            out.remount_problems.append(f"remove the unstacked layer '{path}': {e}")


def refuse_revert(rec: Overlay, upper_used: bool, discard: bool) -> None:
    if not rec.layers:
        raise CommitFailed(f"Overlay '{rec.name}' stacks no layer file above its image: "
                           "there is nothing to revert. Nothing was changed.")
    if upper_used and not discard:
        raise CommitFailed(f"Overlay '{rec.name}' has writes in RAM above its top layer; "
                           "commit them first, or revert with the option discard to throw "
                           "them away too. Nothing was changed.")


def revert(host: Host, rec: Overlay, layout: Layout, cfg: DaemonConfig,
           checkpoint: Checkpoint, *, discard: bool) -> Restacked:
    _unmount_merged(host, rec, layout)
    out = Restacked(rec.name, "revert", rec.layers[:-1])
    gone = rec.layers[-1]
    retired = (gone.path,) if ours(cfg, rec.name, gone) else ()
    try:
        checkpoint(CommitPhase.APPLIED if discard else CommitPhase.NONE, out.layers, "",
                   retired)
    except Exception as e:
        out.layers = rec.layers
        out.error = e if isinstance(e, OverlaydError) else CommitFailed(steps.unexpected(e))
        _remount(host, rec, layout, out)
        return out
    _remount(host, rec.evolve(layers=out.layers), layout, out, fresh_upper=discard)
    _retire(host, retired, out)
    return out


def _unmount_merged(host: Host, rec: Overlay, layout: Layout) -> None:
    try:
        steps.unmount_merged(host, rec, layout)
    except OverlayBusy as e:
        raise OverlayBusy(f"Cannot change the layers of overlay '{rec.name}': it is in use "
                          f"by {describe_holders(e.holders)}; close those files and try "
                          "again.", e.holders) from None


def _remount(host: Host, rec: Overlay, layout: Layout, out: Restacked, *,
             fresh_mounts: bool = False, fresh_upper: bool = False) -> None:
    """The layer mounts as REC says (FRESH_MOUNTS: all made again), the upper (a fresh one
    with FRESH_UPPER), the overlay."""
    try:
        if fresh_mounts:
            steps.drop_layers(host, layout, lazy=True)
        rec = steps.ensure_layers(host, rec, layout)
        out.layers = rec.layers
        if fresh_upper:
            upper_mount = str(layout.upper_mount)
            out.free_old_upper = host.upper.detach_for_later(rec.name, upper_mount, rec.upper)
            host.upper.make(rec.name, upper_mount, rec.upper)
            host.layers.prepare_upper(steps.stack_sources(rec, layout)[0],
                                      str(layout.upper), str(layout.work))
        steps.mount_merged_checked(host, rec, layout)
    except Exception as e:
        text = str(e) if isinstance(e, OverlaydError) else steps.unexpected(e)
        out.remount_problems.append(f"mount the overlay again: {text}")
