"""Commit to a layer (issue 14): the writes become a new read-only layer file, stacked
above the previous lowers, and the overlay is mounted again with an empty upper. The image
is never opened for writing, so this works on squashfs, erofs and iso9660 images and on an
image other overlays share.

Steps, and what a kill -9 after each leaves (``recover.py`` finishes from the record):
1. the record is saved in phase LAYERING naming the file to be written (``pending_layer``);
2. the overlay is unmounted (busy: ``OverlayBusy``, nothing changed);
3. the upper's private xattrs are dropped and the tool writes the layer under a temporary
   name, fsynced, renamed, the directory fsynced (``host/layerfiles.py``);
4. the layer is mounted read-only at ``Layout.layer_mount(N)``;
   killed up to here: recovery removes the pending file (whole or not) and its mount, and
   mounts the overlay again over the same upper: the writes are in RAM, no layer stacked;
5. the record is saved with the layer on top, phase APPLIED (``checkpoint``; a failure to
   save is a failure of the commit: the layer is removed, the writes stay in RAM);
   killed from here on: the layer is whole and recorded; recovery stacks it and mounts
   the overlay over a fresh upper (as after an in-place commit that wrote everything);
6. a fresh upper, the overlay mounted over the new stack; the old upper is freed later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from overlayd.config import DaemonConfig
from overlayd.engine import steps
from overlayd.engine.commit import outcome_error, unmount_to_commit
from overlayd.engine.create import KERNEL_MAX_LOWERS
from overlayd.errors import (
    Cancelled,
    CommitFailed,
    LimitExceeded,
    OverlaydError,
)
from overlayd.host.ports import Applied, Host
from overlayd.jobs import CancelToken
from overlayd.layout import Layout
from overlayd.model import CommitPhase, Layer, LayerFormat, Overlay

# checkpoint(phase, the record's layers, the pending file): saved before the step goes on.
LayerCheckpoint = Callable[[CommitPhase, tuple[Layer, ...], str], None]


@dataclass
class Layered:
    """What a commit to a layer did. ERROR set: the writes are still in RAM and no new
    layer is stacked (REMOUNTED says whether the overlay is mounted again)."""

    name: str
    layers: tuple[Layer, ...]  # the record's layers now
    applied: Applied | None = None
    error: OverlaydError | None = None
    remount_problems: list[str] = field(default_factory=list)
    stacked: bool = False  # the new layer is recorded: the writes are in it
    free_old_upper: Callable[[], None] = lambda: None

    @property
    def remounted(self) -> bool:
        return not self.remount_problems

    def outcome_error(self, upper_dir: str) -> OverlaydError | None:
        return outcome_error(
            self.error, self.remount_problems, upper_dir,
            what=f"Commit of overlay '{self.name}' to a layer",
            into=f"the layer '{self.layers[-1].path}'" if self.layers else "a layer",
            name=self.name, cancelled=", the overlay is mounted again, and no layer was added.",
            failed="no layer was added.")


def check_depth(rec: Overlay, cfg: DaemonConfig, more: int = 1) -> None:
    """Before anything changes: MORE layers must fit the configured and the kernel's limit."""
    depth = len(rec.layers) + more
    if depth > cfg.max_layers:
        raise LimitExceeded(f"Overlay '{rec.name}' would stack {depth} layer files; at most "
                            f"{cfg.max_layers} are allowed (max_layers in overlayd.conf). "
                            "Squash its layers first. Nothing was changed.")
    if depth + 1 > KERNEL_MAX_LOWERS:
        raise LimitExceeded(f"Overlay '{rec.name}' would stack {depth + 1} lower layers; "
                            f"the kernel allows {KERNEL_MAX_LOWERS}. Nothing was changed.")


def run(host: Host, rec: Overlay, layout: Layout, cfg: DaemonConfig, fmt: LayerFormat,
        checkpoint: LayerCheckpoint, *, cancel: CancelToken | None = None) -> Layered:
    check_depth(rec, cfg)
    if cancel is not None and cancel.asked:
        raise Cancelled(f"Commit of overlay '{rec.name}' was cancelled before it started; "
                        "nothing changed.")
    directory = str(cfg.layers_of(rec.name))
    host.layerfiles.prepare_dir(directory)
    path = host.layerfiles.next_path(directory, fmt.value)
    checkpoint(CommitPhase.LAYERING, rec.layers, path)
    unmount_to_commit(host, rec, layout)
    out = Layered(rec.name, rec.layers)
    index = len(rec.layers)
    mounted = False
    try:
        out.applied = host.layerfiles.build(
            str(layout.upper), path, fmt.value,
            None if cancel is None else (lambda: cancel.asked))
        if cancel is not None:
            cancel.seal()  # the layer is whole: from here on it is only stacked
        info = host.images.open_image(path, None)
        host.images.close_image(info)
        layer = Layer(path=path, dev=info.dev, ino=info.ino, fstype=fmt.value)
        device = steps.mount_layer(host, layer, layout, index)
        mounted = True
        layer = layer.model_copy(update={"loop_device": device})
        checkpoint(CommitPhase.APPLIED, (*rec.layers, layer), "")
        out.layers = (*rec.layers, layer)
        out.stacked = True
    except Exception as e:  # whatever happened, the overlay must come back (below)
        out.error = e if isinstance(e, OverlaydError) else CommitFailed(steps.unexpected(e))
        _take_back(host, layout, index, path, mounted, out)
    _restore(host, rec.evolve(layers=out.layers), layout, out)
    return out


def _take_back(host: Host, layout: Layout, index: int, path: str, mounted: bool,
               out: Layered) -> None:
    """A layer that is not recorded is not kept: its mount and its file go."""
    try:
        if mounted:
            host.mounts.unmount(str(layout.layer_mount(index)),
                                steps.owns_layer(layout, index), lazy=True)
        host.layerfiles.remove(path)
    except OverlaydError as e:
        out.remount_problems.append(f"remove the unfinished layer: {e}")


def _restore(host: Host, rec: Overlay, layout: Layout, out: Layered) -> None:
    """A fresh upper if the writes are in the new layer; the overlay up over the stack."""
    try:
        if out.stacked:
            upper_mount = str(layout.upper_mount)
            out.free_old_upper = host.upper.detach_for_later(rec.name, upper_mount, rec.upper)
            host.upper.make(rec.name, upper_mount, rec.upper)
            host.layers.prepare_upper(steps.stack_sources(rec, layout)[0],
                                      str(layout.upper), str(layout.work))
    except Exception as e:
        text = str(e) if isinstance(e, OverlaydError) else steps.unexpected(e)
        out.remount_problems.append(f"start a fresh upper: {text}")
        return
    try:
        steps.mount_merged_checked(host, rec, layout)
    except Exception as e:
        text = str(e) if isinstance(e, OverlaydError) else steps.unexpected(e)
        out.remount_problems.append(f"mount the overlay: {text}")
