"""Recovery at start: reconcile the state records with the mount table.

Adopt what is live, finish what an interrupted procedure left (every step of Create,
Commit and Discard has a way out, see below), remove what a dead daemon left half-made,
and adopt live overlays that have no usable record (boot overlays, or a record someone
damaged) from the mount table. A record from a newer overlayd is left as it is, with
everything it describes. Returns what it decided; the manager saves and removes records.

Where a killed procedure leaves things, and what recovery does:
- Create (record CREATING, any layer up or not): tear down, remove.
- Commit, record COMMITTING:
  - phase NONE (nothing written yet) or APPLYING (the image holds part of the writes, the
    upper all of them): the image back read-only, the overlay back over the same upper;
    APPLYING also marks the overlay half-committed.
  - phase APPLIED (every write is in the image): a fresh upper (whatever the old one's
    state), the image read-only, the overlay back up.
  - phase LAYERING (a commit to a layer, engine/layercommit.py, before its record named
    the new layer): the pending layer file and its mount go; then as phase NONE.
    A commit to a layer that recorded its layer is in phase APPLIED: the layer is stacked
    and the overlay comes back over a fresh upper.
- Discard (record DISCARDING): finish the teardown, remove.
Layer files the record names are mounted where missing (``steps.ensure_layers``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from overlayd import adopt
from overlayd.config import DaemonConfig
from overlayd.engine import steps, teardown
from overlayd.errors import MountFailed, OverlaydError
from overlayd.host.ports import Host, Owned
from overlayd.layout import Layout
from overlayd.model import (
    CommitPhase,
    LowerKind,
    MergeEngine,
    Overlay,
    OverlaySpec,
    OverlayState,
)
from overlayd.mountinfo import MountInfo
from overlayd.store import StateStore, Unreadable

log = logging.getLogger(__name__)


@dataclass
class Recovery:
    adopted: list[Overlay] = field(default_factory=list)  # to make ACTIVE, save, register
    repaired: list[str] = field(default_factory=list)  # brought back after an interruption
    cleaned: list[str] = field(default_factory=list)  # half-made or dead: records to remove
    # adopted from their mounts alone, without a record: boot overlays (or units made with
    # overlayctl render), or overlays whose record could not be read
    booted: list[str] = field(default_factory=list)
    half_committed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def recover(host: Host, cfg: DaemonConfig, store: StateStore,
            boot: dict[str, OverlaySpec] | None = None, now_usec: int = 0) -> Recovery:
    """BOOT: the specs of boot overlays (their mount units, not a daemon, made them)."""
    boot = boot or {}
    result = Recovery()
    mounts = host.mounts.table()  # once, for every overlay
    top = steps.tops(mounts)
    for name in store.names():
        try:
            _recover_name(host, cfg, store, name, boot.get(name), mounts, top, now_usec,
                          result)
        except OverlaydError as e:
            result.problems.append(f"{name}: {e}")
    if not result.problems:  # else a record not adopted may use one: the next start
        try:
            sweep_shared_lowers(host, cfg, result)
        except OverlaydError as e:
            result.problems.append(f"the shared image mounts: {e}")
    for rec in result.adopted:
        lower = rec.lowers[0]
        if lower.kind is LowerKind.DIRECTORY:
            continue
        try:
            host.locks.hold(lower.image, lower.dev, lower.ino)
        except OverlaydError as e:
            result.problems.append(f"{rec.name}: {e}")
    return result


def adopt_late(host: Host, cfg: DaemonConfig, name: str, spec: OverlaySpec,
               now_usec: int = 0) -> Overlay | None:
    """A boot overlay whose mount units came up after the daemon started: adopted from its
    three mounts (asked one by one, not the whole table), its image locked. None if its
    overlay is not mounted (yet); MountFailed if only some layers are."""
    layout = Layout.for_overlay(cfg.runtime_dir, name)
    mountpoint = spec.mountpoint or cfg.default_mountpoint(name)
    layer_mounts = [str(layout.layer_mount(i)) for i in range(len(spec.layers))]
    tops = host.mounts.at_each([str(layout.lower), str(layout.upper_mount), *layer_mounts,
                                mountpoint])
    merged = tops[mountpoint]
    if merged is None or not host.merge.owns(name)(merged):
        return None
    rec = adopt.adopt_unrecorded(host, cfg, name, spec,
                                 [m for m in tops.values() if m is not None], now_usec)
    if rec is not None and rec.image_kind is not LowerKind.DIRECTORY:
        host.locks.hold(rec.image, rec.lowers[0].dev, rec.lowers[0].ino)
    return rec


def sweep_shared_lowers(host: Host, cfg: DaemonConfig, result: Recovery) -> None:
    """The shared image mounts no adopted overlay uses (the last discard was killed before
    it unmounted one, or a create before its overlay was recorded up): unmounted and
    removed. The overlays are recovered first, so the counts are the records'."""
    root = Layout.for_overlay(cfg.runtime_dir, "x").shared_lowers
    if host.files.path_kind(str(root)) != "directory":
        return
    used = {steps.lower_dir(rec, Layout.for_overlay(cfg.runtime_dir, rec.name))
            for rec in result.adopted if rec.lowers[0].shared}
    for entry in host.files.list_dir(str(root)):
        path = str(root / entry)
        if path in used:
            continue
        try:
            # Ours: nobody else mounts in this private directory; the image comes from a
            # loop device or is a block device.
            host.mounts.unmount(path, lambda m: m.source.startswith("/dev/"))
            host.files.remove_dir(path)
        except OverlaydError as e:
            result.problems.append(f"the unused image mount '{path}': {e}")


def _recover_name(host: Host, cfg: DaemonConfig, store: StateStore, name: str,
                  spec: OverlaySpec | None, mounts: list[MountInfo],
                  top: dict[str, MountInfo], now_usec: int, result: Recovery) -> None:
    loaded = store.load(name)
    if isinstance(loaded, Unreadable):
        if loaded.too_new:
            raise OverlaydError(f"its state record cannot be used: {loaded.reason}; leaving "
                                "it and its mounts as they are.")
        result.problems.append(f"{name}: its state record cannot be used ({loaded.reason}); "
                               "adopting the overlay from the mount table if it is mounted.")
        loaded = None
    if loaded is not None:
        _recover_one(host, loaded, store.layout(name), top, result)
        return
    # Create writes the record before its first mount and teardown removes it last, so
    # live mounts without a record are not a dead daemon's leftovers: a boot overlay, or
    # one made by hand from 'overlayctl render'. Adopt them or keep hands off.
    adopted = adopt.adopt_unrecorded(host, cfg, name, spec, mounts, now_usec)
    if adopted is not None:
        result.adopted.append(adopted)
        result.booted.append(name)
        return
    _clean_unrecorded(host, cfg, name)
    result.cleaned.append(name)


def _recover_one(host: Host, rec: Overlay, layout: Layout, top: dict[str, MountInfo],
                 result: Recovery) -> None:
    def mounted(path: str, owned: Owned) -> bool:
        m = top.get(path)
        return m is not None and owned(m)

    if rec.commit_phase is CommitPhase.LAYERING:
        # A commit to a layer died before its record named the layer: whole or not, the
        # file is not in use, and the writes are still in the upper. Away with it.
        steps.drop_layers(host, layout, lazy=True, keep=len(rec.layers))
        if rec.pending_layer:
            host.layerfiles.remove(rec.pending_layer)
        rec = rec.evolve(commit_phase=CommitPhase.NONE, pending_layer="")
    for path in rec.retired_layers:  # a squash or revert took them out of the stack
        host.layerfiles.remove(path)
    rec = rec.evolve(retired_layers=())
    upper_mount = str(layout.upper_mount)
    upper_alive = mounted(upper_mount, host.upper.owns(rec.name, rec.upper))
    applied = rec.state is OverlayState.COMMITTING and rec.commit_phase is CommitPhase.APPLIED
    if rec.state in (OverlayState.CREATING, OverlayState.DISCARDING) or \
            (not upper_alive and not applied):
        # A shared image mount is left to the sweep at the end: others may use it.
        stopped = teardown.run(host, rec, layout, force=True,
                               drop_lower=not rec.lowers[0].shared)
        if stopped is not None:
            raise stopped.error
        result.cleaned.append(rec.name)
        return
    overlay_up = mounted(rec.mountpoint, host.merge.owns(rec.name))
    if overlay_up and rec.engine is MergeEngine.FUSE:
        # A FUSE server that died left a dead mount (ENOTCONN): detached, and the overlay
        # comes back below over the same upper, with a new server.
        dead = host.merge.reap_dead(rec.name, rec.mountpoint, str(layout.upper))
        if dead is not None:
            log.warning("%s It is mounted again over the same writes.", dead)
            overlay_up = False
    lower_dir = steps.lower_dir(rec, layout)
    # A shared image mount may have been mounted by this very recovery (for another
    # overlay of the image): ask the kernel, not the table read at the start.
    lower = host.mounts.at(lower_dir) if rec.lowers[0].shared else top.get(lower_dir)
    lower_ok = rec.image_kind is LowerKind.DIRECTORY or (
        lower is not None and steps.owns_lower(rec, layout)(lower) and "ro" in lower.options
        and steps.lower_matches(host, rec, lower))  # a partition: its loop device's window
    # The loop device is the one under the image mount, whatever the record says (a
    # commit killed after it remounted the image had not recorded the new one yet).
    if lower_ok and lower is not None and steps.via_loop(rec) and \
            lower.source != rec.loop_device:
        rec = rec.evolve(lowers=(rec.lowers[0].model_copy(
            update={"loop_device": lower.source}), *rec.lowers[1:]))
    if overlay_up:
        if not lower_ok:  # never seen: overlay up over a read-write image. Hands off.
            raise MountFailed(f"Overlay '{rec.name}' is mounted but its image is not mounted "
                               "read-only; leaving it as it is for an admin to look at.")
        result.adopted.append(_settled(steps.ensure_layers(host, rec, layout), half=False))
        return
    # An interrupted commit, or the overlay unmounted behind our back: the writes are in
    # the upper (or, past APPLIED, in the image), so bring the overlay back over the
    # read-only image.
    device = rec.loop_device
    if not lower_ok:
        driver = steps.driver_for(host, rec.fstype)
        if lower is not None:
            host.mounts.syncfs(lower_dir)
            host.mounts.unmount(lower_dir, steps.owns_lower(rec, layout))
        if rec.lowers[0].shared:
            if host.files.path_kind(str(layout.shared_lowers)) == "missing":
                host.files.make_dir(str(layout.shared_lowers), 0o700)
            if host.files.path_kind(lower_dir) == "missing":
                host.files.make_dir(lower_dir, 0o755)
        info = host.images.reopen_image(rec.image, rec.lowers[0].dev, rec.lowers[0].ino,
                                        writable=False)
        try:
            device = steps.mount_lower(host, rec, layout, info, driver, read_only=True)
        finally:
            host.images.close_image(info)
    rec = steps.ensure_layers(host, rec, layout)
    if applied:
        if upper_alive:
            host.mounts.unmount(upper_mount, host.upper.owns(rec.name, rec.upper))
        rec = rec.evolve(upper=host.upper.make(rec.name, upper_mount, rec.upper))
        host.layers.prepare_upper(steps.stack_sources(rec, layout)[0] if rec.image_kind
                                  is not LowerKind.DIRECTORY or rec.layers else rec.image,
                                  str(layout.upper), str(layout.work))
    steps.mount_merged_checked(host, rec, layout)
    half = rec.state is OverlayState.COMMITTING and rec.commit_phase is CommitPhase.APPLYING
    rec = rec.evolve(lowers=(rec.lowers[0].model_copy(update={"loop_device": device}),
                             *rec.lowers[1:]))
    result.adopted.append(_settled(rec, half=half))
    result.repaired.append(rec.name)
    if half or rec.half_committed:
        result.half_committed.append(rec.name)


def _settled(rec: Overlay, *, half: bool) -> Overlay:
    """REC as recovery leaves it (the manager makes it ACTIVE): no commit under way;
    half-committed if a commit stopped while writing the image (or an earlier one did and
    none has finished since)."""
    return rec.evolve(commit_phase=CommitPhase.NONE, pending_layer="",
                      half_committed=rec.half_committed or half)


def _clean_unrecorded(host: Host, cfg: DaemonConfig, name: str) -> None:
    """A directory without a usable record and with nothing mounted: remove what is left
    (the state store removes the record, its temporary and the directory)."""
    layout = Layout.for_overlay(cfg.runtime_dir, name)
    if host.files.path_kind(str(layout.layer_mounts)) == "directory":
        # Empty directories only: a layer mount here is not ours to unmount (mount units).
        for entry in host.files.list_dir(str(layout.layer_mounts)):
            with contextlib.suppress(OverlaydError):
                host.files.remove_dir(str(layout.layer_mounts / entry))
    for d in (str(layout.layer_mounts), str(layout.lower), str(layout.upper_mount)):
        if host.files.path_kind(d) == "directory":
            try:
                host.files.remove_dir(d)
            except OverlaydError:
                log.warning("Cannot remove '%s', ignoring.", d)
    mp = cfg.default_mountpoint(name)
    if host.files.path_kind(mp) == "directory":
        try:
            host.files.remove_dir(mp)
        except OverlaydError:
            log.warning("Cannot remove '%s', ignoring.", mp)
