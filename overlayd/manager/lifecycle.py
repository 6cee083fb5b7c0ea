"""Lifecycle: an overlay comes and goes, and its RAM is reserved.

``start`` adopts or cleans what an earlier daemon left (engine/recover.py), then the root
overlay; ``create`` decides the size and reserves it on the event loop before building (two
Creates cannot both take the last of max_total_size), under the image's lock (shared
lowers); ``reconfigure`` resizes a live upper within the same limits (``systemctl reload``);
``discard`` tears down, says what writes it threw away, and frees the mount point.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from overlayd import checks, reconfig
from overlayd.checks import USER_FORCED_OPTIONS
from overlayd.engine import create as create_proc
from overlayd.engine import diff as diff_proc
from overlayd.engine import resize as resize_proc
from overlayd.engine import teardown as teardown_proc
from overlayd.engine.recover import Recovery, recover
from overlayd.errors import (
    CommitFailed,
    InvalidSpec,
    LimitExceeded,
    OverlayBusy,
    OverlaydError,
    OverlayExists,
)
from overlayd.events import NOTICE, Event
from overlayd.layout import hide_internal_paths
from overlayd.manager.core import S, _failure_level, _fields
from overlayd.manager.root import RootOverlay
from overlayd.model import Overlay, OverlaySpec, format_size
from overlayd.sharing import image_key
from overlayd.transitions import after_discard_failed, transition

log = logging.getLogger("overlayd")


@dataclass(frozen=True)
class Lost:
    """The writes a discard threw away: entries of the diff by kind, and the RAM used."""

    entries: int
    added: int
    modified: int
    deleted: int
    bytes: int

    def summary(self) -> str:
        return (f"{self.entries} entries ({self.added} added, {self.modified} changed, "
                f"{self.deleted} deleted), {format_size(self.bytes)} of RAM")


class Lifecycle(RootOverlay):
    async def start(self, boot: dict[str, OverlaySpec] | None = None) -> Recovery:
        """Make the runtime directory and adopt or clean what an earlier daemon (or, for
        the boot overlays BOOT, systemd's mount units) left."""
        self._boot = dict(boot or {})

        def prepare() -> tuple[Recovery, list[Overlay]]:
            self.store.ensure_root()
            result = recover(self.host, self.config, self.store, boot,
                             now_usec=time.time_ns() // 1000)
            settled = []
            for found in result.adopted:
                rec = transition(found, S.ACTIVE)
                if rec != found or found.name in result.booted:
                    self._save_quietly(rec)
                try:
                    self.store.sweep(rec.name)
                except OverlaydError as e:  # a stale temporary costs nothing but space
                    result.problems.append(f"{rec.name}: {e}")
                settled.append(rec)
            for name in result.cleaned:
                try:
                    self.store.remove(name)
                except OverlaydError as e:
                    result.problems.append(f"{name}: {e}")
            # zram devices of overlays discarded while another namespace held them
            self.host.upper.collect(str(self.config.runtime_dir))
            return result, settled

        result, settled = await self._blocking(prepare)
        for rec in settled:
            self._overlays[rec.name] = rec
            self._shared.add(rec)
            try:
                self._claims.claim(rec.name, rec.mountpoint)
            except OverlaydError as e:  # two records, one mount point: keep both, say so
                log.warning("Recovery: %s", e)
            how = ("Repaired" if rec.name in result.repaired else
                   "Adopted boot" if rec.name in result.booted else "Adopted")
            log.info("%s overlay '%s' at '%s'.", how, rec.name, rec.mountpoint,
                     extra=_fields(rec, Event.RECOVERED, OVERLAYD_RECOVERY=how.lower()))
            if rec.half_committed:
                log.warning("Overlay '%s': a commit was interrupted while writing the image "
                            "'%s', which now holds part of the changes; every change is "
                            "still in RAM. Commit again to finish, or discard with force to "
                            "keep the image as it is.", rec.name, rec.image,
                            extra=_fields(rec, Event.FAILED, OVERLAYD_ACTION="commit",
                                          OVERLAYD_HALF_COMMITTED=1))
        for name in result.cleaned:
            log.info("Removed the leftovers of overlay '%s'.", name,
                     extra={"OVERLAYD_NAME": name, "OVERLAYD_EVENT": Event.RECOVERED,
                            "OVERLAYD_RECOVERY": "removed"})
        for problem in result.problems:
            log.warning("Recovery: %s", hide_internal_paths(problem, self.config.runtime_dir))
        await self._adopt_root()
        return result

    @functools.cached_property
    def memory_total(self) -> int:
        """MemTotal, read once: max_total_size's percent is of it."""
        return self.host.system.memory_total()

    def reserved_total(self) -> int:
        """The RAM every overlay, and every Create under way, reserves for writes. The root
        overlay is left out: the initramfs sized it (overlayd.root.size=, by default half
        the memory, as max_total_size's default) before the daemon ran, and counting it
        would leave nothing for any other overlay on a protected root."""
        others = (r for r in self._overlays.values() if not self.is_root(r.name))
        return checks.reserved_total(others) + sum(self._reserving.values())

    def total_limit(self) -> int:
        """max_total_size in bytes."""
        return self.config.total_limit(self.memory_total)

    async def create(self, spec: OverlaySpec, *, owner_uid: int = 0) -> Overlay:
        name = spec.name
        if name in self._overlays or name in self._creating:
            raise OverlayExists(name)
        if len(self._overlays) + len(self._creating) >= self.config.max_overlays:
            raise LimitExceeded(f"There are already {self.config.max_overlays} overlays, the "
                                "configured maximum (max_overlays in overlayd.conf).")
        self._creating.add(name)
        try:
            spec = self._reserve(spec)
            built = await self._blocking(self._create_blocking, spec, owner_uid)
        except OverlaydError as e:
            log.log(_failure_level(e), "Failed to create overlay '%s': %s", name, e,
                    extra={"OVERLAYD_NAME": name, "OVERLAYD_IMAGE": spec.image or "",
                           "OVERLAYD_MOUNTPOINT": spec.mountpoint or "",
                           "OVERLAYD_EVENT": Event.FAILED, "OVERLAYD_ACTION": "create",
                           "OVERLAYD_UID": owner_uid, "OVERLAYD_ERROR": e.dbus_name})
            raise
        finally:
            self._creating.discard(name)
            self._reserving.pop(name, None)
        rec = self._move(built, S.ACTIVE)
        log.info("Created overlay '%s' of '%s' at '%s'.", name, rec.image, rec.mountpoint,
                 extra=_fields(rec, Event.CREATED, uid=owner_uid))
        return rec

    def _reserve(self, spec: OverlaySpec) -> OverlaySpec:
        """Decide SPEC's size and reserve it, on the loop (no await between the check and
        the reservation): two Creates cannot both take the last of max_total_size."""
        size = checks.choose_size(spec, self.config, self.memory_total)
        checks.check_total(size, self.reserved_total(), self.total_limit(), name=spec.name)
        self._reserving[spec.name] = size
        return spec.model_copy(update={"size": size})

    def _create_blocking(self, spec: OverlaySpec, owner_uid: int) -> Overlay:
        """In a worker: prepare (claiming the mount point), save the CREATING record (so
        that a kill from here on leaves something recovery removes), build, save the ACTIVE
        record."""
        claimed: list[str] = []

        def claim(mountpoint: str) -> None:
            self._claims.claim(spec.name, mountpoint)
            claimed.append(mountpoint)

        try:
            prepared = create_proc.prepare(self.host, self.config, spec, claim,
                                           owner_uid=owner_uid,
                                           now_usec=time.time_ns() // 1000)
        except BaseException:
            for mp in claimed:
                self._claims.release(spec.name, mp)
            raise
        try:
            self.store.begin(prepared.record)
            try:
                built = self._build_shared(prepared)
            except BaseException:
                try:
                    self.store.remove(spec.name)
                except OverlaydError as e:
                    log.warning("Cannot remove the state of overlay '%s': %s, ignoring.",
                                spec.name, e)
                self._claims.release(spec.name, prepared.record.mountpoint)
                raise
        finally:
            create_proc.release(self.host, prepared)
        return built

    def _build_shared(self, prepared: create_proc.Prepared) -> Overlay:
        """Build under the image's lock: the first overlay of an image mounts it (and
        locks it), the others reuse that mount; a discard never takes it down meanwhile."""
        key = image_key(prepared.record)
        with self._shared.locked(key):
            built = create_proc.build(
                self.host, self.config, prepared,
                finish=lambda rec: self.store.save(transition(rec, S.ACTIVE)),
                note=self.store.save,
                first_user=not self._shared.in_use(key))
            self._shared.add(built)
        return built

    async def reconfigure(self, name: str, settings: dict[str, Any], *, caller_uid: int = 0,
                          created_usec: int | None = None) -> reconfig.Plan:
        """Apply SETTINGS (spec keys, checked by the model) to the live overlay NAME, as
        ``systemctl reload overlayd@NAME`` does: a new size of a tmpfs upper is applied at
        once (its writes stay); every other key that differs is named in the returned plan's
        ``fixed`` and in the journal, never silently ignored. The record keeps the new size."""
        async with self._lock(name):
            rec = self._current(name, created_usec)
            forced = USER_FORCED_OPTIONS if rec.owner_uid != 0 else ()
            plan = reconfig.plan(rec, settings, forced_options=forced)
            try:
                if plan.live and self.is_root(name):
                    raise InvalidSpec(f"Overlay '{name}' is the root file system; the size of "
                                      "its RAM is set at boot (overlayd.root.size=).", "size")
                if plan.live and rec.state not in (S.ACTIVE, S.UNMOUNTED):
                    raise OverlayBusy(f"Overlay '{name}' is {rec.state}; its RAM for the writes "
                                      "can be resized only while it is active.")
                if "size" in plan.live:
                    size = int(plan.live["size"])
                    # Decided and held on the event loop, as Create's: a Create running
                    # meanwhile counts the larger of the two sizes.
                    checks.check_total(size, self.reserved_total() - rec.size,
                                       self.total_limit(), name=name)
                    self._reserving[name] = max(size - rec.size, 0)
                    try:
                        upper = await self._blocking(resize_proc.run, self.host, self.config,
                                                     rec, self._layout(name), size)
                    finally:
                        self._reserving.pop(name, None)
                    rec = self._move(rec, rec.state, upper=upper)
                    await self._blocking(self.store.save, rec)
            except OverlaydError as e:
                self._log_failure(rec, "reconfigure", e, caller_uid)
                raise
        fields = _fields(rec, Event.RECONFIGURED, uid=caller_uid,
                         OVERLAYD_CHANGED=",".join(sorted(plan.live)) or None,
                         OVERLAYD_NOT_CHANGED=",".join(sorted(plan.fixed)) or None,
                         OVERLAYD_UPPER_SIZE=rec.size)
        changed = (f"the RAM for its writes is {format_size(rec.size)} now"
                   if plan.live else "nothing changed")
        if plan.fixed:
            log.log(NOTICE, "Reconfigured overlay '%s': %s. %s", name, changed,
                    reconfig.explain(plan), extra=fields)
        else:
            log.info("Reconfigured overlay '%s': %s.", name, changed, extra=fields)
        return plan

    async def discard(self, name: str, *, force: bool = False, caller_uid: int = 0,
                      created_usec: int | None = None) -> None:
        if self.is_root(name):  # cannot unmount /: its writes go at the next reboot
            await self.request_commit_at_shutdown(name, False, caller_uid=caller_uid)
            return
        async with self._lock(name):
            rec = self._current(name, created_usec)
            if rec.half_committed and not force:
                e: OverlaydError = CommitFailed(
                    f"Overlay '{name}' is half-committed: a commit was interrupted while "
                    f"writing '{rec.image}', which now holds part of the changes. Commit "
                    "again to finish writing them, or discard with force to throw away the "
                    "rest and keep the image as it is.")
                self._log_failure(rec, "discard", e, caller_uid)
                raise e
            previous = rec.state
            rec = self._move(rec, S.DISCARDING)
            lost = await self._blocking(self._writes_lost, rec)
            stopped = await self._blocking(self._discard_blocking, rec, force)
            if stopped is not None:
                e = stopped.error
                e.message = hide_internal_paths(e.message, self.config.runtime_dir)
                rec = self._move(rec, after_discard_failed(previous, stopped.merged_down),
                                 error=str(e))
                await self._blocking(self._save_quietly, rec)
                self._log_failure(rec, "discard", e, caller_uid)
                raise e
            del self._overlays[name]
            self._locks.pop(name, None)
            self._claims.release(name, rec.mountpoint)
        forced = " (forced)" if force else ""
        if lost is None or lost.entries == 0:
            log.info("Discarded overlay '%s'%s.", name, forced,
                     extra=_fields(rec, Event.DISCARDED, uid=caller_uid))
        else:  # writes were thrown away: a notice that says which, for whoever looks later
            log.log(NOTICE, "Discarded overlay '%s'%s, throwing away its writes: %s.",
                    name, forced, lost.summary(),
                    extra=_fields(rec, Event.DISCARDED, uid=caller_uid,
                                  OVERLAYD_ENTRIES=lost.entries, OVERLAYD_ADDED=lost.added,
                                  OVERLAYD_MODIFIED=lost.modified,
                                  OVERLAYD_DELETED=lost.deleted, OVERLAYD_BYTES=lost.bytes))
        self._changed(name, None)

    def _writes_lost(self, rec: Overlay) -> Lost | None:
        """What a discard of REC throws away (its diff, and the RAM its writes use), or None
        if that cannot be read (an upper that is gone, a failed overlay): never a reason not
        to discard."""
        try:
            kinds = [kind for _path, kind in
                     diff_proc.run(self.host, rec, self._layout(rec.name))]
            used = self.host.upper.usage(str(self._layout(rec.name).upper_mount),
                                         rec.upper).used
        except (OverlaydError, OSError) as e:
            log.debug("Cannot count the writes of overlay '%s': %s", rec.name, e)
            return None
        return Lost(entries=len(kinds), added=kinds.count("added"),
                    modified=kinds.count("modified"), deleted=kinds.count("deleted"),
                    bytes=used)

    def _discard_blocking(self, rec: Overlay, force: bool) -> teardown_proc.Stopped | None:
        # Quietly: a record that cannot be written must not keep anyone from discarding
        # (a Commit, by contrast, is refused without its record: see _commit_blocking).
        self._save_quietly(rec)
        stopped = self._teardown_shared(rec, force)
        if stopped is None:
            try:
                self.store.remove(rec.name)
            except OverlaydError as e:  # unmounted and gone; a start cleans what is left
                log.warning("Cannot remove the state of overlay '%s': %s, ignoring.",
                            rec.name, hide_internal_paths(str(e), self.config.runtime_dir))
        return stopped

    def _teardown_shared(self, rec: Overlay, force: bool) -> teardown_proc.Stopped | None:
        """Tear down under the image's lock; the last overlay of an image unmounts it and
        drops its lock."""
        key = image_key(rec)
        with self._shared.locked(key):
            stopped = teardown_proc.run(
                self.host, rec, self._layout(rec.name), force=force,
                drop_lower=not self._shared.in_use(key, but=rec.name,
                                                   window=rec.lowers[0].window),
                release_lock=not self._shared.in_use(key, but=rec.name))
            if stopped is None:
                self._shared.remove(rec)
        return stopped
