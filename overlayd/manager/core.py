"""OverlayManager: the engine's async face, and the only owner of overlay state.

It keeps the registry of overlays (frozen records, replaced on every change), serializes
calls per overlay with a lock, runs the blocking procedures of ``engine`` in worker
threads (so the event loop stays responsive while a commit copies gigabytes), applies
every state change through ``transitions``, saves through the one ``StateStore``, tells
listeners about changes, and logs each outcome once. Errors leave here without a path of
the daemon's own files in them.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from overlayd import checks, reconfig
from overlayd.checks import USER_FORCED_OPTIONS
from overlayd.claims import MountpointClaims
from overlayd.config import DaemonConfig
from overlayd.engine import commit as commit_proc
from overlayd.engine import create as create_proc
from overlayd.engine import diff as diff_proc
from overlayd.engine import layercommit as layer_proc
from overlayd.engine import resize as resize_proc
from overlayd.engine import squash as squash_proc
from overlayd.engine import teardown as teardown_proc
from overlayd.engine.recover import Recovery, adopt_late, recover
from overlayd.errors import (
    CommitFailed,
    ImageInUse,
    InvalidSpec,
    LimitExceeded,
    MountFailed,
    NoSuchOverlay,
    OverlayBusy,
    OverlaydError,
    OverlayExists,
)
from overlayd.events import NOTICE, Event
from overlayd.host.ports import Applied, Host, MountWatch, Progress
from overlayd.host.rootfs import ROOT_NAME, SIZE_RE, RootFs, RootInfo
from overlayd.jobs import CancelToken
from overlayd.layout import Layout, hide_internal_paths
from overlayd.model import (
    CommitPhase,
    CommitStats,
    CommitTarget,
    DiffEntry,
    Layer,
    LayerFormat,
    Lower,
    LowerKind,
    Merged,
    MergeEngine,
    Overlay,
    OverlaySpec,
    OverlayState,
    Upper,
    UpperUsage,
    format_size,
)
from overlayd.sharing import SharedLowers, image_key
from overlayd.store import StateStore
from overlayd.transitions import after_discard_failed, transition
from overlayd.usage import SpaceCache

log = logging.getLogger("overlayd")

P = ParamSpec("P")
T = TypeVar("T")
Listener = Callable[[str, Overlay | None], None]  # (name, record or None when gone)
S = OverlayState


def _failure_level(e: OverlaydError) -> int:
    """Notice for what callers cause (bad input, busy, full, exists...); warning for what
    points at the system (a mount or a commit that failed, an unexpected error)."""
    return logging.WARNING if isinstance(e, MountFailed | CommitFailed) or \
        type(e) is OverlaydError else NOTICE


def _fields(rec: Overlay, event: Event, *, uid: int | None = None, **more: Any
            ) -> dict[str, Any]:
    """Structured journal fields for an EVENT about REC (log.py adds its MESSAGE_ID)."""
    return {"OVERLAYD_EVENT": event, "OVERLAYD_NAME": rec.name, "OVERLAYD_IMAGE": rec.image,
            "OVERLAYD_MOUNTPOINT": rec.mountpoint, "OVERLAYD_UID": uid, **more}


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


class OverlayManager:
    def __init__(self, config: DaemonConfig, host: Host, root: RootFs | None = None) -> None:
        """ROOT: where to look for the root file system on an overlay (the daemon passes
        one; None: never adopt one)."""
        self.config = config
        self.host = host
        self.root = root
        self.root_info: RootInfo | None = None  # the root overlay, once adopted
        self.store = StateStore(host.files, config.runtime_dir, config.mount_root_dir)
        self._overlays: dict[str, Overlay] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._creating: set[str] = set()
        self._reserving: dict[str, int] = {}  # the sizes of the Creates under way
        self._spaces = SpaceCache(host.system.fs_space, time.monotonic, config.usage_interval)
        self._claims = MountpointClaims()  # mount points: Creates never share or nest them
        self._listeners: list[Listener] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._shared = SharedLowers()  # which overlays use which image; its locks
        # Following the mount table (watch_mounts): the boot overlays' specs, for those
        # whose mount units come up after the start; the watch; the pending check.
        self._boot: dict[str, OverlaySpec] = {}
        self._watch: MountWatch | None = None
        self._mounts_dirty = False
        self._follower: asyncio.Task[None] | None = None
        self._last_check = 0.0
        self._servers: dict[str, int] = {}  # FUSE overlays: a pidfd of each one's server

    def set_config(self, config: DaemonConfig) -> None:
        """A reloaded configuration (config.reloaded: the runtime directory and the other
        places stay): its defaults and limits apply to what is asked from now on."""
        self.config = config

    # -- plumbing -------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _changed(self, name: str, rec: Overlay | None) -> None:
        for fn in self._listeners:
            fn(name, rec)

    async def _blocking(self, fn: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
        """Run FN in a worker thread. If the caller is cancelled (the daemon stopping), the
        work still finishes; ``aclose`` waits for it, so no mount is half-changed."""
        fut = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kw))
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)
        try:
            return await asyncio.shield(fut)
        except OverlaydError as e:  # the one edge where the daemon's own paths are hidden
            e.message = hide_internal_paths(e.message, self.config.runtime_dir)
            e.args = (e.message,)
            raise

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _layout(self, name: str) -> Layout:
        if self.is_root(name):
            assert self.root is not None
            return self.root.layout
        return self.store.layout(name)

    def _move(self, rec: Overlay, to: OverlayState, **changes: Any) -> Overlay:
        """The one place an overlay's state changes: checked against the table, put in the
        registry, announced. Saving is the caller's next step (in its worker)."""
        new = transition(rec, to, **changes)
        self._overlays[new.name] = new
        self._changed(new.name, new)
        return new

    def _save_quietly(self, rec: Overlay) -> None:
        """Save from a worker; a record that cannot be written is logged, never fatal: the
        mounts are what they are, and recovery reads them too."""
        try:
            self.store.save(rec)
        except OverlaydError as e:
            log.warning("Cannot save the state of overlay '%s': %s, ignoring.", rec.name, e)

    # -- lifecycle ------------------------------------------------------------------------

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

    # -- the root file system on an overlay ----------------------------------------------

    def is_root(self, name: str) -> bool:
        """Whether NAME is the root file system's overlay (made by the initramfs)."""
        return name == ROOT_NAME and self.root_info is not None

    async def _adopt_root(self) -> None:
        """Adopt the root overlay the initramfs made, as the overlay 'root'. It has no
        state record: the initramfs' state files and the mount table say it all, at every
        start."""
        if self.root is None:
            return
        try:
            info = await self._blocking(self.root.read)
        except OverlaydError as e:
            log.warning("Cannot read the state of the root overlay: %s", e)
            return
        if info is None:
            return
        if ROOT_NAME in self._overlays:
            log.warning("The root file system is on an overlay, but an overlay named '%s' "
                        "exists already; it is not adopted.", ROOT_NAME)
            return
        rec = Overlay(name=ROOT_NAME, state=S.ACTIVE,
                      lowers=(Lower(kind=LowerKind.BLOCK, image=info.device,
                                    fstype=info.fstype),),
                      upper=Upper(size=info.size),
                      merged=Merged(mountpoint=self.root.mountpoint),
                      owner_uid=0, created_usec=info.created_usec)
        self.root_info = info
        self._overlays[ROOT_NAME] = rec
        used = self.usage_now(ROOT_NAME).used
        log.info("The root file system is protected: it is on an overlay of '%s' (read-only), "
                 "its writes go to RAM (%s, %s of at most %s used) and are thrown away at "
                 "the next reboot unless committed at shutdown. Set by %s.",
                 info.device, info.upper, format_size(used), format_size(info.size),
                 info.source or "the initramfs",
                 extra=_fields(rec, Event.RECOVERED, OVERLAYD_RECOVERY="adopted root"))
        if info.last_failure:
            log.warning("The commit at the last shutdown into '%s' did not finish: %s",
                        info.device, info.last_failure,
                        extra=_fields(rec, Event.FAILED, OVERLAYD_ACTION="commit",
                                      OVERLAYD_ERROR="CommitFailed"))

    def root_overlay(self) -> Overlay | None:
        return self._overlays.get(ROOT_NAME) if self.root_info is not None else None

    def commit_at_shutdown(self, name: str) -> bool:
        """Whether the writes of NAME (the root) are to be committed at shutdown."""
        if not self.is_root(name):
            return False
        assert self.root is not None
        try:
            return self.root.commit_requested()
        except OSError:
            return False

    async def request_commit_at_shutdown(self, name: str, on: bool, *,
                                         caller_uid: int = 0) -> None:
        """Commit the root overlay's writes at shutdown (ON), or no longer."""
        rec = self.get(name)
        if not self.is_root(name):
            raise InvalidSpec(f"Overlay '{name}' is not the root file system: only the root "
                              "overlay commits at shutdown; commit without at_shutdown.")
        assert self.root is not None
        async with self._lock(name):
            await self._blocking(self.root.request_commit, on)
        self._changed(name, rec)
        # No event (MESSAGE_ID) of its own: nothing was committed or discarded yet; the
        # exitrd's result is on the console, and a failure in the next boot's journal.
        fields = {"OVERLAYD_NAME": rec.name, "OVERLAYD_IMAGE": rec.image,
                  "OVERLAYD_MOUNTPOINT": rec.mountpoint, "OVERLAYD_UID": caller_uid,
                  "OVERLAYD_AT_SHUTDOWN": int(on)}
        if on:
            log.info("The writes to the root file system will be committed into '%s' at "
                     "shutdown.", rec.image, extra=fields)
        else:
            log.info("The writes to the root file system will be thrown away at the next "
                     "reboot.", extra=fields)

    async def set_root_at_boot(self, enabled: bool, size: str | None = None, *,
                               caller_uid: int = 0) -> str:
        """Write the setting the initramfs reads at the next boot: the root on an overlay
        (ENABLED, with the tmpfs limited to SIZE) or not. Returns where it went."""
        if self.root is None:
            raise InvalidSpec("This daemon does not manage the root file system.")
        if size is not None and not SIZE_RE.match(size):
            raise InvalidSpec(f"The size '{size[:64]}' is not a number of bytes with k, M, G "
                              "or % after it.")
        text = ("# The root file system on an overlay at boot, written by 'overlayctl root'.\n"
                "# The kernel command line's overlayd.root= wins over this file.\n"
                + (f'mode = "tmpfs"\nsize = "{size}"\n' if enabled and size else
                   'mode = "tmpfs"\n' if enabled else 'mode = "off"\n'))
        root = self.root
        where = await self._blocking(root.set_next_boot, text,
                                     protected=self.root_info is not None)
        log.info("The root file system will %s at the next boot.",
                 "be on an overlay" if enabled else "not be on an overlay",
                 extra={"OVERLAYD_NAME": ROOT_NAME, "OVERLAYD_UID": caller_uid,
                        "OVERLAYD_ROOT_AT_BOOT": "tmpfs" if enabled else "off"})
        return where

    # -- reading --------------------------------------------------------------------------

    def list(self) -> list[Overlay]:
        return [self._overlays[n] for n in sorted(self._overlays)]

    def get(self, name: str) -> Overlay:
        try:
            return self._overlays[name]
        except KeyError:
            raise NoSuchOverlay(name) from None

    def upper_dir(self, name: str) -> str:
        return str(self._layout(name).upper)

    async def usage(self, name: str) -> UpperUsage:
        rec = self.get(name)
        return await self._blocking(self.host.upper.usage, str(self._layout(name).upper_mount),
                                    rec.upper)

    @functools.cached_property
    def memory_total(self) -> int:
        """MemTotal, read once: max_total_size's percent is of it."""
        return self.host.system.memory_total()

    def reserved_total(self) -> int:
        """The RAM every overlay, and every Create under way, reserves for writes."""
        return checks.reserved_total(self._overlays.values()) + sum(self._reserving.values())

    def total_limit(self) -> int:
        """max_total_size in bytes."""
        return self.config.total_limit(self.memory_total)

    def image_space(self, name: str) -> tuple[int, int]:
        """The size and the free space (for root, who commits) of the file system that
        holds NAME's image, read at most once per usage_interval per file system; (0, 0)
        when it cannot be read (the image is being remounted by a commit)."""
        try:
            return self._spaces.get(self._image_mount(self.get(name)))
        except OverlaydError:
            return 0, 0

    def _image_mount(self, rec: Overlay) -> str:
        """Where REC's image is mounted (a directory lower: the directory itself)."""
        if self.is_root(rec.name) and self.root is not None:
            return str(self.root.state_dir / "lower")
        if rec.image_kind is LowerKind.DIRECTORY:
            return rec.image
        return str(self._layout(rec.name).lower_of(rec.lowers[0]))

    def fd_path(self, fd: int) -> str:
        """What an image fd refers to, for messages and polkit details."""
        return self.host.images.fd_path(fd)

    def usage_now(self, name: str) -> UpperUsage:
        """Usage of the upper, read inline: statvfs of a tmpfs does no I/O, so property
        reads may call it on the event loop. Zeros while the tmpfs is being replaced."""
        rec = self.get(name)
        try:
            return self.host.upper.usage(str(self._layout(name).upper_mount), rec.upper)
        except OverlaydError:
            return UpperUsage(size=rec.size, used=0, inodes_used=0)

    async def diff(self, name: str, created_usec: int | None = None
                   ) -> builtins.list[DiffEntry]:
        async with self._lock(name):
            rec = self._current(name, created_usec)
            pairs = await self._blocking(diff_proc.run, self.host, rec, self._layout(name))
        return [DiffEntry(path=p, kind=k) for p, k in pairs]

    # -- changing -------------------------------------------------------------------------

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

    def _current(self, name: str, created_usec: int | None) -> Overlay:
        rec = self.get(name)
        if created_usec is not None and rec.created_usec != created_usec:
            raise NoSuchOverlay(name)  # replaced by a namesake while the caller waited
        return rec

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
            error = done.outcome_error(self.upper_dir(name))
            changes: dict[str, Any] = {"error": str(error) if error else "",
                                       "commit_phase": CommitPhase.NONE}
            if done.loop_device is not None:
                changes["lowers"] = (rec.lowers[0].model_copy(
                    update={"loop_device": done.loop_device}), *rec.lowers[1:])
            if done.error is None:
                changes["half_committed"] = False
            elif done.image_touched:  # stopped while writing: the image holds a part
                changes["half_committed"] = True
            rec = self._move(rec, S.ACTIVE if done.remounted else S.FAILED, **changes)
            # Saved in the worker's wake: a daemon stopped right now still finds a record
            # that says what is mounted.
            await self._blocking(self._save_quietly, rec)
            self._in_background(done.free_old_upper)
            if error is not None:
                self._log_failure(rec, "commit", error, caller_uid)
                raise error
        applied = done.applied
        assert applied is not None
        stats = CommitStats(entries=applied.entries, bytes=applied.bytes, seconds=applied.seconds)
        log.info("Committed overlay '%s' into '%s': %d entries, %d bytes in %.3f s.", name,
                 rec.image, stats.entries, stats.bytes, stats.seconds,
                 extra=_fields(rec, Event.COMMITTED, uid=caller_uid,
                               OVERLAYD_ENTRIES=stats.entries,
                               OVERLAYD_BYTES=stats.bytes, OVERLAYD_SECONDS=f"{stats.seconds:.6f}"))
        return stats

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

    def _commit_blocking(self, rec: Overlay, progress: Progress | None,
                         caller_uid: int, cancel: CancelToken | None = None
                         ) -> commit_proc.Committed:
        # Under the image's lock: commits of overlays of one image never overlap, and no
        # create of it starts meanwhile. Nobody else may read it (claim_image).
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

                return commit_proc.run(self.host, rec, layout, progress, checkpoint,
                                       as_uid=caller_uid, cancel=cancel)
            finally:
                commit_proc.release_image(self.host, rec)

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
            error = done.outcome_error(self.upper_dir(name))
            rec = self._move(rec, S.ACTIVE if done.remounted else S.FAILED,
                             error=str(error) if error else "", layers=done.layers,
                             commit_phase=CommitPhase.NONE, pending_layer="")
            await self._blocking(self._save_quietly, rec)
            self._in_background(done.free_old_upper)
            if error is not None:
                self._log_failure(rec, "commit", error, caller_uid)
                raise error
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
            error = done.outcome_error(self.upper_dir(name))
            changes: dict[str, Any] = {"error": str(error) if error else "",
                                       "commit_phase": CommitPhase.NONE,
                                       # left to remove (by recovery) if not removed yet
                                       "retired_layers": retired if done.error is None
                                       and not done.remounted else ()}
            if done.loop_device is not None:
                changes["lowers"] = (rec.lowers[0].model_copy(
                    update={"loop_device": done.loop_device}), *rec.lowers[1:])
            if done.error is None:
                changes["layers"] = ()
            elif done.image_touched:
                changes["half_committed"] = True
            rec = self._move(rec, S.ACTIVE if done.remounted else S.FAILED, **changes)
            await self._blocking(self._save_quietly, rec)
            if error is not None:
                self._log_failure(rec, "squash", error, caller_uid)
                raise error
        applied = done.applied or Applied(0, 0, 0.0)
        log.info("Squashed the layers of overlay '%s' into '%s': %d entries, %d bytes.",
                 name, rec.image, applied.entries, applied.bytes,
                 extra=_fields(rec, Event.COMMITTED, uid=caller_uid, OVERLAYD_ACTION="squash"))
        return CommitStats(entries=applied.entries, bytes=applied.bytes,
                           seconds=applied.seconds)

    def _squash_into_image_blocking(self, rec: Overlay, progress: Progress | None,
                                    caller_uid: int, cancel: CancelToken | None,
                                    retired: tuple[str, ...]) -> commit_proc.Committed:
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

                def finish() -> Overlay:
                    after = rec.evolve(layers=(), commit_phase=CommitPhase.NONE,
                                       retired_layers=retired)
                    self.store.save(after)
                    return after

                sources = [str(layout.layer_mount(i)) for i in range(len(rec.layers))]
                return commit_proc.run(self.host, rec, layout, progress, checkpoint,
                                       as_uid=caller_uid, cancel=cancel, sources=sources,
                                       finish=finish)
            finally:
                commit_proc.release_image(self.host, rec)

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
            error = done.outcome_error()
            rec = self._move(rec, S.ACTIVE if done.remounted else S.FAILED,
                             error=str(error) if error else "", layers=done.layers,
                             commit_phase=CommitPhase.NONE, pending_layer="",
                             retired_layers=())
            await self._blocking(self._save_quietly, rec)
            self._in_background(done.free_old_upper)
            if error is not None:
                self._log_failure(rec, what, error, caller_uid)
                raise error
        log.info("Overlay '%s': %s done; %d layer file(s) above the image now.", name, what,
                 len(rec.layers), extra=_fields(rec, Event.COMMITTED, uid=caller_uid,
                                                OVERLAYD_ACTION=what))
        return done

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

    def _log_failure(self, rec: Overlay, action: str, e: OverlaydError, uid: int) -> None:
        log.log(_failure_level(e), "Failed to %s overlay '%s': %s", action, rec.name, e,
                extra=_fields(rec, Event.FAILED, uid=uid, OVERLAYD_ACTION=action,
                              OVERLAYD_ERROR=e.dbus_name))

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

    def image_users(self) -> dict[tuple[int, int], int]:
        """How many overlays use each image (for tests and status)."""
        return self._shared.counts()

    # -- following the mount table ---------------------------------------------------------

    def watch_mounts(self, *, debounce: float = 0.1, interval: float = 0.5) -> None:
        """React to changes of the mount table (on the running event loop): an overlay
        unmounted from outside becomes UNMOUNTED (and ACTIVE again when it is mounted back),
        a boot overlay whose mount units come up is adopted. Events are batched: a check
        DEBOUNCE seconds after the first, at most one per INTERVAL, asking the kernel about
        each watched mount point (``Mounts.at_each``); Create and Discard never wait for it."""
        self._debounce, self._interval = debounce, interval
        self._watch = self.host.mounts.watch()
        asyncio.get_running_loop().add_reader(self._watch.fileno(), self._on_mount_event)

    def unwatch_mounts(self) -> None:
        for fd in self._servers.values():
            asyncio.get_running_loop().remove_reader(fd)
            self.host.images.close_fd(fd)
        self._servers.clear()
        if self._watch is not None:
            asyncio.get_running_loop().remove_reader(self._watch.fileno())
            self._watch.close()
            self._watch = None
        if self._follower is not None:
            self._follower.cancel()

    def _on_server_end(self, name: str) -> None:
        """A FUSE server ended (its pidfd is readable): a check, as for a mount event."""
        fd = self._servers.pop(name, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            self.host.images.close_fd(fd)
        self._mounts_dirty = True
        if self._follower is None or self._follower.done():
            self._follower = asyncio.ensure_future(self._follow_mounts())

    def _on_mount_event(self) -> None:
        if self._watch is None:
            return
        # The event loop's own wait has consumed the change already (mountinfo reports
        # each change to one poll); draining takes what is left.
        self._watch.drain()
        self._mounts_dirty = True
        if self._follower is None or self._follower.done():
            self._follower = asyncio.ensure_future(self._follow_mounts())

    async def _follow_mounts(self) -> None:
        loop = asyncio.get_running_loop()
        while self._mounts_dirty:
            await asyncio.sleep(max(self._debounce,
                                    self._last_check + self._interval - loop.time()))
            self._mounts_dirty = False
            try:
                await self.check_mounts()
            except Exception as e:  # never let the watcher die of one bad check
                log.warning("Checking the mount table failed: %s", e)
            self._last_check = loop.time()

    async def check_mounts(self) -> builtins.list[str]:
        """Compare the registry with the kernel: the names whose state changed (or that
        were adopted). Overlays busy with a call are left to that call."""
        changed = await self._check_servers()
        watched = {r.name: r for r in self._overlays.values()
                   if r.state in (S.ACTIVE, S.UNMOUNTED) and not self._lock(r.name).locked()
                   and not self.is_root(r.name)}  # / is not unmounted behind our back
        late = {n: spec for n, spec in self._boot.items()
                if n not in self._overlays and n not in self._creating}
        if not watched and not late:
            return changed
        paths = [r.mountpoint for r in watched.values()]
        paths += [spec.mountpoint or self.config.default_mountpoint(n)
                  for n, spec in late.items()]
        tops = await self._blocking(self.host.mounts.at_each, paths)
        for name, rec in watched.items():
            top = tops.get(rec.mountpoint)
            up = top is not None and self.host.merge.owns(name)(top)
            if (rec.state is S.ACTIVE) == up:
                continue
            if await self._follow_one(name, rec.state):
                changed.append(name)
        for name, spec in late.items():
            top = tops.get(spec.mountpoint or self.config.default_mountpoint(name))
            if top is not None and self.host.merge.owns(name)(top) and \
                    await self._adopt_late(name, spec):
                changed.append(name)
        return changed

    async def _check_servers(self) -> builtins.list[str]:
        """The FUSE overlays: one whose server died (its mount answers ENOTCONN) is FAILED,
        its dead mount detached, its writes kept in the upper (Commit remounts it); a live
        server is watched through its pidfd while the mount table is (watch_mounts)."""
        changed = []
        for name in [r.name for r in self._overlays.values()
                     if r.engine is MergeEngine.FUSE and r.state is S.ACTIVE
                     and not self._lock(r.name).locked()]:  # busy: left to that call
            async with self._lock(name):
                rec = self._overlays.get(name)
                if rec is None or rec.state is not S.ACTIVE:
                    continue
                upper = str(self._layout(name).upper)
                dead = await self._blocking(self.host.merge.reap_dead, name, rec.mountpoint,
                                            upper)
                if dead is None:
                    if self._watch is not None and name not in self._servers:
                        fd = await self._blocking(self.host.merge.watch_server, name, upper)
                        if fd is not None:
                            self._servers[name] = fd
                            asyncio.get_running_loop().add_reader(fd, self._on_server_end,
                                                                  name)
                    continue
                rec = self._move(rec, S.FAILED, error=dead)
                log.error("%s", dead, extra=_fields(rec, Event.FAILED))
                await self._blocking(self._save_quietly, rec)
                changed.append(name)
        return changed

    async def _follow_one(self, name: str, seen: OverlayState) -> bool:
        """Overlay NAME was seen the other way than its state SEEN says: look again under
        its lock, and move it (ACTIVE <-> UNMOUNTED) if it still is."""
        async with self._lock(name):
            rec = self._overlays.get(name)
            if rec is None or rec.state is not seen:
                return False
            top = await self._blocking(self.host.mounts.at, rec.mountpoint)
            up = top is not None and self.host.merge.owns(name)(top)
            if up == (seen is S.ACTIVE):
                return False
            if up:
                rec = self._move(rec, S.ACTIVE, error="")
                log.info("Overlay '%s' is mounted at '%s' again.", name, rec.mountpoint,
                         extra=_fields(rec, Event.RECOVERED, OVERLAYD_RECOVERY="remounted"))
            else:
                rec = self._move(rec, S.UNMOUNTED, error=(
                    f"The overlay was unmounted from '{rec.mountpoint}' outside overlayd."))
                log.warning("Overlay '%s' was unmounted from '%s' outside overlayd; its "
                            "writes are still in RAM. Commit to write them and mount it "
                            "again, or discard them.", name, rec.mountpoint,
                            extra=_fields(rec, Event.UNMOUNTED))
            await self._blocking(self._save_quietly, rec)
        return True

    async def _adopt_late(self, name: str, spec: OverlaySpec) -> bool:
        """A boot overlay whose mount units came up after the start: adopted at once."""
        self._creating.add(name)
        try:
            rec = await self._blocking(adopt_late, self.host, self.config, name, spec,
                                       time.time_ns() // 1000)
            if rec is None:
                return False
            rec = transition(rec, S.ACTIVE)
            await self._blocking(self._save_quietly, rec)
        except OverlaydError as e:
            log.warning("Boot overlay '%s': %s", name, e)
            return False
        finally:
            self._creating.discard(name)
        try:
            self._claims.claim(name, rec.mountpoint)
        except OverlaydError as e:
            log.warning("Boot overlay '%s': %s", name, e)
        self._overlays[name] = rec
        self._shared.add(rec)
        log.info("Adopted boot overlay '%s' at '%s'.", name, rec.mountpoint,
                 extra=_fields(rec, Event.RECOVERED, OVERLAYD_RECOVERY="adopted boot"))
        self._changed(name, rec)
        return True

    def _in_background(self, fn: Callable[[], None]) -> None:
        """Run FN in a worker thread without making the caller wait; ``aclose`` waits."""
        fut = asyncio.get_running_loop().run_in_executor(None, fn)
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Wait for work in worker threads (calls whose callers are gone, freeing committed
        uppers). Overlays stay as they are."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
