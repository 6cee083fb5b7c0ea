"""Commit: unmount, apply the upper to the image opened read-write, sync, go back
read-only, remount on a fresh upper. On failure the upper is kept and the overlay is
mounted again over it, so nothing is lost. For a caller other than root the image must
open read-write as that caller.

Checkpoints (``Checkpoint``) tell the manager how far it got, so that a daemon killed in
the middle leaves a record recovery can finish from: APPLYING once the image is about to
be written, APPLIED once every write is in it.

Cancelling (``cancel``, a ``jobs.CancelToken``): asked before the commit starts, nothing
happens (``Cancelled``); asked while the upper is applied, the apply stops at its next
safe point (``host/merge.py``: between entries, or within a large file not yet named),
the image is synced and the commit goes the way of any failure: the upper is kept and
the overlay mounted again over it (the image, touched, holds part of the changes). Once
every entry is applied, the commit can no longer be cancelled (the token is sealed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from overlayd.engine import steps
from overlayd.errors import (
    Cancelled,
    CommitFailed,
    ImageInUse,
    NoSpace,
    OverlayBusy,
    OverlaydError,
    describe_holders,
    describe_users,
)
from overlayd.host.ports import Applied, Host, ImageInfo, Progress
from overlayd.jobs import CancelToken
from overlayd.layout import Layout
from overlayd.model import CommitPhase, Lower, LowerKind, Overlay, show_partition
from overlayd.mountinfo import MountInfo
from overlayd.overlayfs import READ_ONLY_FSTYPES

Checkpoint = Callable[[CommitPhase], None]


@dataclass
class Committed:
    """What a commit did. ERROR set: the writes are still in RAM (REMOUNTED says whether
    the overlay is mounted again). The manager raises ``outcome_error()``."""

    name: str
    applied: Applied | None = None
    error: OverlaydError | None = None
    remount_problems: list[str] = field(default_factory=list)
    loop_device: str | None = None  # the read-only loop device now under the overlay
    image_touched: bool = False  # writing the image began: on failure it holds a part
    free_old_upper: Callable[[], None] = lambda: None  # call after replying: frees RAM

    @property
    def remounted(self) -> bool:
        return not self.remount_problems

    def outcome_error(self, upper_dir: str) -> OverlaydError | None:
        part = ("the image holds part of them (commit again to finish)"
                if self.image_touched else "the image is unchanged")
        return outcome_error(
            self.error, self.remount_problems, upper_dir,
            what=f"Commit of overlay '{self.name}'", into="the image",
            name=self.name, cancelled=f" and the overlay is mounted again; {part}.",
            failed="fix the cause and commit again.")


def outcome_error(error: OverlaydError | None, remount_problems: list[str], upper_dir: str,
                  *, what: str, into: str, name: str, cancelled: str, failed: str
                  ) -> OverlaydError | None:
    """How a commit (into the image, or to a layer) ended, as its caller is told: ERROR
    (None: it worked) with the overlay mounted again or not (REMOUNT_PROBLEMS). WHAT
    names the commit, INTO where the writes went; CANCELLED ends the sentence of a
    cancelled one ("Nothing was lost: the writes are still in RAM" and this), FAILED that
    of a failed one."""
    problems = "; ".join(remount_problems)
    if error is not None:
        if problems:
            return CommitFailed(f"{error} The overlay could not be mounted again "
                                f"({problems}); the writes are still in RAM under "
                                f"'{upper_dir}'.")
        if isinstance(error, Cancelled):
            return Cancelled(f"{what} was cancelled. Nothing was lost: the writes are still "
                             f"in RAM{cancelled}")
        text = (f"{what} failed: {error} Nothing was lost: the writes are still in RAM and "
                f"the overlay is mounted again; {failed}")
        return NoSpace(text) if isinstance(error, NoSpace) else CommitFailed(text)
    if problems:
        return CommitFailed(f"The changes of overlay '{name}' were written to {into}, but "
                            f"the overlay could not be mounted again: {problems}.")
    return None


def unmount_to_commit(host: Host, rec: Overlay, layout: Layout) -> None:
    """Unmount the overlay a commit (into the image or to a layer) takes the writes of (and
    end its FUSE server); OverlayBusy naming who holds it, and nothing changed, if in use."""
    try:
        steps.unmount_merged(host, rec, layout)
    except OverlayBusy as e:
        raise OverlayBusy(f"Cannot commit overlay '{rec.name}': it is in use by "
                          f"{describe_holders(e.holders)}; close those files and try again.",
                          e.holders) from None


def refuse_early(rec: Overlay, as_uid: int, *, layers_ok: bool = False) -> None:
    """What makes a commit impossible before anything is touched. LAYERS_OK: a Squash
    into the image, which applies the layer files (``run``'s SOURCES)."""
    if rec.layers and not layers_ok:
        raise CommitFailed(f"Overlay '{rec.name}' stacks layer files above its image; "
                           "merging its writes into the image under them would change what "
                           "they mean. Commit with target 'layer'. Nothing was changed.")
    if rec.fstype in READ_ONLY_FSTYPES:
        raise CommitFailed(f"Overlay '{rec.name}' cannot be committed: its image holds "
                           f"{rec.fstype}, which is read-only by design. The writes stay in RAM; "
                           "commit them to a layer (option target 'layer'), or Discard "
                           "throws them away.")
    if as_uid != 0 and rec.image_kind is LowerKind.DIRECTORY:
        raise CommitFailed(f"Only root may commit overlay '{rec.name}': its lower is the "
                           f"directory '{rec.image}', and overlayd would write into it as root.")


def claim_image(host: Host, rec: Overlay, layout: Layout, others: list[str]) -> None:
    """Before anything changes: refuse (ImageInUse) to write an image someone else reads,
    naming them: OTHERS (overlayd's other overlays of it, of the part it writes), then
    loop devices (of that part: a partition's loop device reads no other), mounts,
    writers and lock holders the kernel knows of; then take QEMU's write lock on it, which
    ``release_image`` gives back. A directory lower has no image to claim."""
    if rec.image_kind is LowerKind.DIRECTORY:
        return
    lower = rec.lowers[0]
    users = [f"overlay '{n}'" for n in others]
    users += host.images.users(lower.image, lower.dev, lower.ino,
                               own_devices={lower.loop_device} - {""},
                               own_mounts={steps.lower_dir(rec, layout)},
                               window=lower.window)
    if users:
        raise ImageInUse(
            f"Cannot commit overlay '{rec.name}': its image '{lower.image}' is in use by "
            f"{describe_users(users)}; writing it would corrupt what they read. Nothing "
            "was changed and the writes stay in RAM; commit again once they are gone.",
            users)
    try:
        host.locks.lock_write(lower.image, lower.dev, lower.ino)
    except ImageInUse as e:
        raise ImageInUse(
            f"Cannot commit overlay '{rec.name}': its image '{lower.image}' is locked by "
            f"another program: {describe_users(e.users)}. Nothing was changed and the "
            "writes stay in RAM.", e.users) from None


def release_image(host: Host, rec: Overlay) -> None:
    """Back to the reader's lock after a commit."""
    if rec.image_kind is not LowerKind.DIRECTORY:
        host.locks.unlock_write(rec.lowers[0].dev, rec.lowers[0].ino)


def run(host: Host, rec: Overlay, layout: Layout, progress: Progress | None,
        checkpoint: Checkpoint, *, as_uid: int = 0, cancel: CancelToken | None = None,
        sources: list[str] | None = None, finish: Callable[[], Overlay] | None = None
        ) -> Committed:
    """SOURCES and FINISH (Squash into the image, issue 14): apply these directories (the
    layer files' mounts, lowest first) instead of the upper, which stays as it is; once
    they are in the image, FINISH records the stack without them and gives the record to
    mount the overlay again by."""
    refuse_early(rec, as_uid, layers_ok=sources is not None)
    if cancel is not None and cancel.asked:  # cancelled while it waited its turn
        raise Cancelled(f"Commit of overlay '{rec.name}' was cancelled before it started; "
                        "nothing changed.")
    # Open the image both ways before anything changes: a file that can't be opened (or
    # was replaced) fails the commit here, and the way back never depends on the path.
    lower = rec.lowers[0]
    rw = ro = None
    dir_fd: int | None = None
    if rec.image_kind is LowerKind.DIRECTORY:
        dir_fd = host.images.open_lower_dir(rec.image, lower.dev, lower.ino)
    else:
        rw = host.images.reopen_image(rec.image, lower.dev, lower.ino, writable=True,
                                      as_uid=as_uid)
        try:
            ro = host.images.reopen_image(rec.image, lower.dev, lower.ino, writable=False)
            _check_partition_fits(rec, lower, ro.size)
        except BaseException:
            host.images.close_image(rw)
            if ro is not None:
                host.images.close_image(ro)
            raise
    try:
        return _commit_opened(host, rec, layout, progress, checkpoint, rw, ro, dir_fd,
                              cancel, sources, finish)
    finally:
        for info in (rw, ro):
            if info is not None:
                host.images.close_image(info)
        if dir_fd is not None:
            host.images.close_fd(dir_fd)


def _check_partition_fits(rec: Overlay, lower: Lower, size: int) -> None:
    """An image file cut short since the create ends inside or before the partition: the
    loop device would read past the end, and the commit fail on an I/O error at its mount
    (found by hand), naming internal paths and leaving the overlay failed."""
    if lower.kind is LowerKind.BLOCK or not lower.sizelimit \
            or size >= lower.offset + lower.sizelimit:
        return
    raise CommitFailed(f"The image '{rec.image}' is {size} bytes now, but its partition "
                       f"{show_partition(lower.partition)} ends at byte "
                       f"{lower.offset + lower.sizelimit}: the file was cut short since the "
                       "overlay was created; refusing to write to it. The writes stay in "
                       "RAM.")


def _commit_opened(host: Host, rec: Overlay, layout: Layout, progress: Progress | None,
                   checkpoint: Checkpoint, rw: ImageInfo | None, ro: ImageInfo | None,
                   dir_fd: int | None, cancel: CancelToken | None = None,
                   sources: list[str] | None = None,
                   finish: Callable[[], Overlay] | None = None) -> Committed:
    # Computed before anything is unmounted: a failure here must leave the overlay up.
    driver = steps.driver_for(host, rec.fstype) if rec.fstype else ""
    unmount_to_commit(host, rec, layout)
    out = Committed(rec.name)
    rw_fd: int | None = None
    try:
        target = steps.lower_sources(rec, layout, dir_fd)[0]
        checkpoint(CommitPhase.APPLYING)
        if rw is not None:
            # The image is written through a mount attached nowhere: a mount namespace
            # cloned meanwhile (unshare -m, nspawn, PrivateMounts=) cannot copy it and
            # keep its read-write superblock alive, and a kill -9 unmounts it.
            host.mounts.unmount(steps.lower_dir(rec, layout), steps.owns_lower(rec, layout))
            rw_fd = steps.open_lower_detached(host, rec, rw, driver)
            target = f"/proc/self/fd/{rw_fd}/."  # "/.": the directory, not the fd link
        if cancel is not None:
            cancel.check()  # the first safe point: nothing written yet
        out.image_touched = True
        for source in sources if sources is not None else [str(layout.upper)]:
            done = host.layers.apply_upper(source, target, progress)
            out.applied = done if out.applied is None else Applied(
                out.applied.entries + done.entries, out.applied.bytes + done.bytes,
                out.applied.seconds + done.seconds)
        if cancel is not None:
            cancel.seal()  # the last safe point: a cancel asked until now stops it here
        host.mounts.syncfs(target)
    except Exception as e:  # whatever happened, the overlay must come back (below)
        out.error = e if isinstance(e, OverlaydError) else CommitFailed(steps.unexpected(e))
        if isinstance(e, Cancelled) and out.image_touched:
            _sync_quietly(host, target, out)
    if rw_fd is not None:
        try:
            host.mounts.close_detached(rw_fd)
        except OverlaydError as e:
            out.error = out.error or e
    _restore(host, rec, layout, driver, ro, dir_fd, checkpoint, out, finish)
    return out


def _sync_quietly(host: Host, target: str, out: Committed) -> None:
    """A cancelled apply still syncs what it wrote (a failure to sync is the error)."""
    try:
        host.mounts.syncfs(target)
    except OverlaydError as e:
        out.error = e


def _restore(host: Host, rec: Overlay, layout: Layout, driver: str, ro: ImageInfo | None,
             dir_fd: int | None, checkpoint: Checkpoint, out: Committed,
             finish: Callable[[], Overlay] | None = None) -> None:
    """Back to read-only, a fresh upper if the writes are in the image, the overlay up."""
    def step(what: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
            return True
        except Exception as e:  # record it and stop: later steps build on this one
            text = str(e) if isinstance(e, OverlaydError) else steps.unexpected(e)
            out.remount_problems.append(f"{what}: {text}")
            return False

    lower_dir = steps.lower_dir(rec, layout)
    if ro is not None:
        found: list[MountInfo | None] = []
        if not step("look at the image mount", lambda: found.append(host.mounts.at(lower_dir))):
            return
        lower = found[0]
        if lower is not None and "ro" not in lower.options:
            if not step("unmount the image", lambda: host.mounts.unmount(
                    lower_dir, steps.owns_lower(rec, layout))):
                return
            lower = None
        if lower is None:
            def remount() -> None:
                out.loop_device = steps.mount_lower(host, rec, layout, ro, driver,
                                                    read_only=True)
            if not step("mount the image read-only", remount):
                return
    if out.error is None and finish is not None:
        def restack() -> None:  # the layers are in the image: the stack goes, the upper stays
            nonlocal rec
            rec = steps.ensure_layers(host, finish(), layout)
        if not step("record the layers merged", restack):
            return
    elif out.error is None:
        def renew() -> None:
            checkpoint(CommitPhase.APPLIED)
            upper_mount = str(layout.upper_mount)
            out.free_old_upper = host.upper.detach_for_later(rec.name, upper_mount, rec.upper)
            host.upper.make(rec.name, upper_mount, rec.upper)
            host.layers.prepare_upper(steps.lower_sources(rec, layout, dir_fd)[0],
                                      str(layout.upper), str(layout.work))
        if not step("start a fresh upper", renew):
            return
    step("mount the overlay", lambda: steps.mount_merged(host, rec, layout, dir_fd))
