"""Committing: the writes in RAM go into the image, or into a new layer file.

``commit`` writes the image (refused while other overlays read it: ImageInUse) under the
image's lock, or a layer file (``commit_layer``); ``squash`` merges the layer files into one
or into the image, ``revert`` drops the top one (``_restack``). Each moves the overlay to
COMMITTING and back (``_committing``), saves a checkpoint at every phase (what recovery
reads after a kill), and frees the old upper in the background.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from overlayd.engine import commit as commit_proc
from overlayd.engine import layercommit as layer_proc
from overlayd.engine import squash as squash_proc
from overlayd.errors import CommitFailed, ImageInUse, OverlaydError
from overlayd.events import Event
from overlayd.host.ports import Applied, Progress
from overlayd.jobs import CancelToken
from overlayd.layout import Layout
from overlayd.manager.core import S, T, _fields
from overlayd.manager.reading import Reading
from overlayd.model import CommitPhase, CommitStats, CommitTarget, Layer, LayerFormat, Overlay
from overlayd.sharing import image_key

Checkpoint = Callable[[CommitPhase], None]  # persists how far a commit into the image got


def _image_changes(rec: Overlay, done: commit_proc.Committed) -> dict[str, Any]:
    """What a commit or squash into the image changes in REC besides its state: the loop
    device the image is mounted from now, and half_committed when it stopped while
    writing (the image holds a part of the writes)."""
    changes: dict[str, Any] = {}
    if done.loop_device is not None:
        changes["lowers"] = (rec.lowers[0].model_copy(
            update={"loop_device": done.loop_device}), *rec.lowers[1:])
    if done.error is not None and done.image_touched:
        changes["half_committed"] = True
    return changes

log = logging.getLogger("overlayd")


class Committing(Reading):
    async def commit(self, name: str, *, progress: Progress | None = None,
                     cancel: CancelToken | None = None,
                     started: Callable[[], None] | None = None,
                     caller_uid: int = 0, created_usec: int | None = None,
                     target: CommitTarget | None = None,
                     layer_format: LayerFormat = LayerFormat.EROFS) -> CommitStats:
        """CREATED_USEC, if given, must match: the caller was authorized for that overlay,
        not for another one of the same name made since. PROGRESS and CANCEL: see
        engine/commit.py (a job's); STARTED is called once the commit's turn has come.
        TARGET: into the image (the default, unless the overlay stacks layers), or into a
        new layer file of LAYER_FORMAT (``commit_layer``)."""
        if target is CommitTarget.LAYER or (target is None and name in self._overlays
                                             and self._overlays[name].layers):
            return await self.commit_layer(name, layer_format, progress=progress,
                                           cancel=cancel, started=started,
                                           caller_uid=caller_uid, created_usec=created_usec)
        if self.is_root(name):
            rec = self.get(name)
            e: OverlaydError = CommitFailed(
                f"Overlay '{name}' is the root file system, which cannot be unmounted while "
                "the system runs. Commit it with the option at_shutdown to write its changes "
                f"into '{rec.image}' when the system shuts down or reboots "
                "('overlayctl commit root' does).")
            self._log_failure(rec, "commit", e, caller_uid)
            raise e
        async with self._lock(name):
            rec = self._current(name, created_usec)
            commit_proc.refuse_early(rec, caller_uid)
            self._refuse_shared_commit(rec, caller_uid)
            if started is not None:
                started()
            rec, done = await self._committing(
                rec, "commit", caller_uid,
                lambda r: self._commit_blocking(r, progress, caller_uid, cancel))
            changes = _image_changes(rec, done)
            if done.error is None:
                changes["half_committed"] = False
            rec = await self._settle(rec, "commit", caller_uid, done.remounted,
                                     done.outcome_error(self.upper_dir(name)),
                                     done.free_old_upper, **changes)
        applied = done.applied
        assert applied is not None
        stats = CommitStats(entries=applied.entries, bytes=applied.bytes, seconds=applied.seconds)
        log.info("Committed overlay '%s' into '%s': %d entries, %d bytes in %.3f s.", name,
                 rec.image, stats.entries, stats.bytes, stats.seconds,
                 extra=_fields(rec, Event.COMMITTED, uid=caller_uid,
                               OVERLAYD_ENTRIES=stats.entries,
                               OVERLAYD_BYTES=stats.bytes, OVERLAYD_SECONDS=f"{stats.seconds:.6f}"))
        return stats

    def _refuse_shared_commit(self, rec: Overlay, caller_uid: int) -> None:
        """Before anything changes (the state included): a commit into an image other
        overlays of ours read is ImageInUse naming them. The kernel's other users are
        asked in the worker, under the image's lock (``_commit_blocking``)."""
        if not self._shared.in_use(image_key(rec), but=rec.name):
            return
        others = self._shared.users(image_key(rec), but=rec.name, window=rec.lowers[0].window)
        if others:
            shown = ", ".join(f"'{n}'" for n in others[:8])
            part = f" (partition {rec.partition})" if rec.partition else ""
            e = ImageInUse(f"Cannot commit overlay '{rec.name}': its image '{rec.image}'{part} "
                           f"is read by the overlays {shown} too; writing it would corrupt what "
                           "they read. Nothing was changed and the writes stay in RAM; "
                           "commit once they are discarded.",
                           [f"overlay '{n}'" for n in others])
            self._log_failure(rec, "commit", e, caller_uid)
            raise e

    @contextlib.contextmanager
    def _writing_image(self, rec: Overlay) -> Iterator[tuple[Layout, Checkpoint]]:
        """Around a commit or a squash into REC's image: under the image's lock (commits of
        overlays of one image never overlap, and no create of it starts meanwhile), with
        the image claimed (nobody else may read it) and REC saved as committing. Yields its
        layout and the checkpoint that persists each commit phase."""
        key = image_key(rec)
        layout = self._layout(rec.name)
        with self._shared.locked(key):
            commit_proc.claim_image(self.host, rec, layout,
                                    self._shared.users(key, but=rec.name,
                                                       window=rec.lowers[0].window))
            try:
                self.store.save(rec)

                def checkpoint(phase: CommitPhase) -> None:
                    self._save_quietly(rec.evolve(commit_phase=phase))

                yield layout, checkpoint
            finally:
                commit_proc.release_image(self.host, rec)

    def _commit_blocking(self, rec: Overlay, progress: Progress | None,
                         caller_uid: int, cancel: CancelToken | None = None
                         ) -> commit_proc.Committed:
        with self._writing_image(rec) as (layout, checkpoint):
            return commit_proc.run(self.host, rec, layout, progress, checkpoint,
                                   as_uid=caller_uid, cancel=cancel)

    async def commit_layer(self, name: str, fmt: LayerFormat = LayerFormat.EROFS, *,
                           progress: Progress | None = None, cancel: CancelToken | None = None,
                           started: Callable[[], None] | None = None, caller_uid: int = 0,
                           created_usec: int | None = None) -> CommitStats:
        """Commit to a new layer file (engine/layercommit.py): the image is never written."""
        if self.is_root(name):
            rec = self.get(name)
            e: OverlaydError = CommitFailed(
                f"Overlay '{name}' is the root file system; it cannot be committed to a "
                "layer while the system runs.")
            self._log_failure(rec, "commit", e, caller_uid)
            raise e
        async with self._lock(name):
            rec = self._current(name, created_usec)
            try:
                layer_proc.check_depth(rec, self.config)
            except OverlaydError as e:
                self._log_failure(rec, "commit", e, caller_uid)
                raise
            if started is not None:
                started()
            rec, done = await self._committing(
                rec, "commit", caller_uid,
                lambda r: self._commit_layer_blocking(r, fmt, progress, cancel))
            rec = await self._settle(rec, "commit", caller_uid, done.remounted,
                                     done.outcome_error(self.upper_dir(name)),
                                     done.free_old_upper, layers=done.layers,
                                     pending_layer="")
        applied = done.applied
        assert applied is not None
        stats = CommitStats(entries=applied.entries, bytes=applied.bytes, seconds=applied.seconds)
        log.info("Committed overlay '%s' to the layer '%s': %d entries, %d bytes in %.3f s.",
                 name, rec.layers[-1].path, stats.entries, stats.bytes, stats.seconds,
                 extra=_fields(rec, Event.COMMITTED, uid=caller_uid,
                               OVERLAYD_ENTRIES=stats.entries, OVERLAYD_BYTES=stats.bytes,
                               OVERLAYD_SECONDS=f"{stats.seconds:.6f}",
                               OVERLAYD_LAYER=rec.layers[-1].path))
        return stats

    def _commit_layer_blocking(self, rec: Overlay, fmt: LayerFormat,
                               progress: Progress | None, cancel: CancelToken | None
                               ) -> layer_proc.Layered:
        def checkpoint(phase: CommitPhase, layers: tuple[Layer, ...], pending: str) -> None:
            # Not quietly: the record must name the layer before the upper may go.
            self.store.save(rec.evolve(commit_phase=phase, layers=layers,
                                       pending_layer=pending))

        done = layer_proc.run(self.host, rec, self._layout(rec.name), self.config, fmt,
                              checkpoint, cancel=cancel)
        if progress is not None and done.applied is not None and done.error is None:
            progress(done.applied.entries, done.applied.bytes)
        return done

    async def squash(self, name: str, fmt: LayerFormat = LayerFormat.EROFS, *,
                     progress: Progress | None = None, cancel: CancelToken | None = None,
                     started: Callable[[], None] | None = None, caller_uid: int = 0,
                     created_usec: int | None = None,
                     target: CommitTarget = CommitTarget.LAYER) -> CommitStats:
        """Merge the overlay's layer files into one (engine/squash.py), or with TARGET
        image into the image in place (``_squash_into_image``); the writes in RAM stay as
        they are."""
        if target is CommitTarget.IMAGE:
            return await self._squash_into_image(name, progress=progress, cancel=cancel,
                                                 started=started, caller_uid=caller_uid,
                                                 created_usec=created_usec)
        def run(rec: Overlay, checkpoint: squash_proc.Checkpoint) -> squash_proc.Restacked:
            return squash_proc.squash(self.host, rec, self._layout(name), self.config, fmt,
                                      checkpoint, cancel=cancel)

        done = await self._restack(name, "squash", squash_proc.refuse_squash, run,
                                   started=started, caller_uid=caller_uid,
                                   created_usec=created_usec)
        applied = done.applied or Applied(0, 0, 0.0)
        if progress is not None:
            progress(applied.entries, applied.bytes)
        return CommitStats(entries=applied.entries, bytes=applied.bytes,
                           seconds=applied.seconds)

    async def _squash_into_image(self, name: str, *, progress: Progress | None,
                                 cancel: CancelToken | None,
                                 started: Callable[[], None] | None, caller_uid: int,
                                 created_usec: int | None) -> CommitStats:
        """The layer files applied to the image in place, lowest first, with Commit's merge
        and Commit's rules (an exclusive, writable image; its lock; checkpoints); then the
        stack is empty and the upper as it was. Killed while writing the image: the record
        still stacks every layer, and the view is the same (every change applied so far is
        in a layer above too); the overlay is half-committed, and Squash again finishes."""
        if self.is_root(name):
            raise CommitFailed(f"Overlay '{name}' is the root file system; its layers "
                               "cannot change while the system runs.")
        async with self._lock(name):
            rec = self._current(name, created_usec)
            try:
                squash_proc.refuse_into_image(rec)
                commit_proc.refuse_early(rec, caller_uid, layers_ok=True)
            except OverlaydError as e:
                self._log_failure(rec, "squash", e, caller_uid)
                raise
            self._refuse_shared_commit(rec, caller_uid)
            if started is not None:
                started()
            retired = tuple(la.path for la in rec.layers
                            if squash_proc.ours(self.config, name, la))
            rec, done = await self._committing(
                rec, "squash", caller_uid,
                lambda r: self._squash_into_image_blocking(r, progress, caller_uid, cancel,
                                                           retired))
            if done.error is None and done.remounted:  # before the record forgets them
                await self._blocking(self._remove_layer_files, retired)
            changes = _image_changes(rec, done)
            # left to remove (by recovery) if not removed yet
            changes["retired_layers"] = retired if done.error is None and \
                not done.remounted else ()
            if done.error is None:
                changes["layers"] = ()
            rec = await self._settle(rec, "squash", caller_uid, done.remounted,
                                     done.outcome_error(self.upper_dir(name)), None,
                                     **changes)
        applied = done.applied or Applied(0, 0, 0.0)
        log.info("Squashed the layers of overlay '%s' into '%s': %d entries, %d bytes.",
                 name, rec.image, applied.entries, applied.bytes,
                 extra=_fields(rec, Event.COMMITTED, uid=caller_uid, OVERLAYD_ACTION="squash"))
        return CommitStats(entries=applied.entries, bytes=applied.bytes,
                           seconds=applied.seconds)

    def _squash_into_image_blocking(self, rec: Overlay, progress: Progress | None,
                                    caller_uid: int, cancel: CancelToken | None,
                                    retired: tuple[str, ...]) -> commit_proc.Committed:
        def finish() -> Overlay:
            after = rec.evolve(layers=(), commit_phase=CommitPhase.NONE,
                               retired_layers=retired)
            self.store.save(after)
            return after

        with self._writing_image(rec) as (layout, checkpoint):
            sources = [str(layout.layer_mount(i)) for i in range(len(rec.layers))]
            return commit_proc.run(self.host, rec, layout, progress, checkpoint,
                                   as_uid=caller_uid, cancel=cancel, sources=sources,
                                   finish=finish)

    def _remove_layer_files(self, paths: tuple[str, ...]) -> None:
        for path in paths:
            try:
                self.host.layerfiles.remove(path)
            except OverlaydError as e:  # unstacked: harmless, and recovery tries again
                log.warning("Cannot remove the layer file '%s': %s", path, e)

    async def revert(self, name: str, *, discard: bool = False, caller_uid: int = 0,
                     created_usec: int | None = None) -> None:
        """Drop the topmost layer file (engine/squash.py); DISCARD: the writes in RAM too."""
        layout = self._layout(name)

        def refuse(rec: Overlay) -> None:
            used = bool(self.host.files.list_dir(str(layout.upper)))
            squash_proc.refuse_revert(rec, used, discard)

        def run(rec: Overlay, checkpoint: squash_proc.Checkpoint) -> squash_proc.Restacked:
            refuse(rec)  # again, in the worker: the writes may have come meanwhile
            return squash_proc.revert(self.host, rec, layout, self.config, checkpoint,
                                      discard=discard)

        await self._restack(name, "revert", lambda rec: None, run, caller_uid=caller_uid,
                            created_usec=created_usec)

    async def _restack(self, name: str, what: str, refuse: Callable[[Overlay], None],
                       run: Callable[[Overlay, squash_proc.Checkpoint],
                                     squash_proc.Restacked], *,
                       started: Callable[[], None] | None = None, caller_uid: int = 0,
                       created_usec: int | None = None) -> squash_proc.Restacked:
        if self.is_root(name):
            raise CommitFailed(f"Overlay '{name}' is the root file system; its layers "
                               "cannot change while the system runs.")
        async with self._lock(name):
            rec = self._current(name, created_usec)
            try:
                refuse(rec)
            except OverlaydError as e:
                self._log_failure(rec, what, e, caller_uid)
                raise
            if started is not None:
                started()
            def blocking(committing: Overlay) -> squash_proc.Restacked:
                def checkpoint(phase: CommitPhase, layers: tuple[Layer, ...],
                               pending: str, retired: tuple[str, ...]) -> None:
                    self.store.save(committing.evolve(commit_phase=phase, layers=layers,
                                                      pending_layer=pending,
                                                      retired_layers=retired))
                return run(committing, checkpoint)

            rec, done = await self._committing(rec, what, caller_uid, blocking)
            rec = await self._settle(rec, what, caller_uid, done.remounted,
                                     done.outcome_error(),
                                     done.free_old_upper, layers=done.layers,
                                     pending_layer="", retired_layers=())
        log.info("Overlay '%s': %s done; %d layer file(s) above the image now.", name, what,
                 len(rec.layers), extra=_fields(rec, Event.COMMITTED, uid=caller_uid,
                                                OVERLAYD_ACTION=what))
        return done

    async def _settle(self, rec: Overlay, action: str, caller_uid: int, remounted: bool,
                      error: OverlaydError | None, free_old_upper: Callable[[], None] | None,
                      **changes: Any) -> Overlay:
        """After the worker of a commit, a commit to a layer, a squash or a restack: the
        overlay active again (failed if it could not be remounted), its phase cleared, and
        saved in the worker's wake, so a daemon stopped right now still finds a record that
        says what is mounted; the replaced upper freed in the background; ERROR logged
        and raised."""
        rec = self._move(rec, S.ACTIVE if remounted else S.FAILED,
                         error=str(error) if error else "", commit_phase=CommitPhase.NONE,
                         **changes)
        await self._blocking(self._save_quietly, rec)
        if free_old_upper is not None:
            self._in_background(free_old_upper)
        if error is not None:
            self._log_failure(rec, action, error, caller_uid)
            raise error
        return rec

    async def _committing(self, rec: Overlay, action: str, caller_uid: int,
                          work: Callable[[Overlay], T]) -> tuple[Overlay, T]:
        """REC moved to COMMITTING, then WORK(that record) in a worker. If WORK raises,
        nothing was unmounted: the overlay goes back to its state, the failure is logged and
        saved, and the error raised. The COMMITTING record and WORK's result otherwise."""
        before = rec
        rec = self._move(rec, S.COMMITTING, error="")
        try:
            return rec, await self._blocking(work, rec)
        except OverlaydError as e:
            self._move(rec, before.state, error=str(e))
            self._log_failure(rec, action, e, caller_uid)
            await self._blocking(self._save_quietly, self.get(rec.name))
            raise
        finally:
            self._spaces.forget(self._image_mount(before))  # the image may have changed
