"""OverlayManager: the engine's async face, and the only stateful object.

It keeps the registry of overlays, serializes calls per overlay with a lock, runs the
blocking procedures of ``ops`` in worker threads (so the event loop stays responsive
while a commit copies gigabytes), keeps each record's ``state`` current, tells
listeners about changes, and logs each outcome once.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from overlayd import ops
from overlayd.config import DaemonConfig
from overlayd.errors import (
    CommitFailed,
    LimitExceeded,
    MountFailed,
    NoSuchOverlay,
    OverlaydError,
    OverlayExists,
)
from overlayd.events import NOTICE, Event
from overlayd.host.base import Host, Progress
from overlayd.model import CommitStats, DiffEntry, Overlay, OverlaySpec, OverlayState, UpperUsage
from overlayd.state import dump_record

log = logging.getLogger("overlayd")

P = ParamSpec("P")
T = TypeVar("T")
Listener = Callable[[str, Overlay | None], None]  # (name, record or None when gone)


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


class OverlayManager:
    def __init__(self, config: DaemonConfig, host: Host) -> None:
        self.config = config
        self.host = host
        self._overlays: dict[str, Overlay] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._creating: set[str] = set()
        self._create_lock = asyncio.Lock()  # mount point checks must see each other's result
        self._listeners: list[Listener] = []
        self._background: set[asyncio.Future[Any]] = set()

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
        return await asyncio.shield(fut)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _set_state(self, rec: Overlay, state: OverlayState, error: str = "") -> None:
        rec.state = state
        rec.error = error
        self._changed(rec.name, rec)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, boot: dict[str, OverlaySpec] | None = None) -> ops.Recovery:
        """Make the runtime directory and adopt or clean what an earlier daemon (or, for
        the boot overlays BOOT, systemd's mount units) left."""
        def prepare() -> ops.Recovery:
            root = str(self.config.runtime_dir)
            if self.host.path_kind(root) == "missing":
                self.host.make_dir(root, 0o755)
            return ops.recover(self.host, self.config, boot, now_usec=time.time_ns() // 1000)

        result = await self._blocking(prepare)
        for rec in result.adopted:
            self._overlays[rec.name] = rec
            how = ("Repaired" if rec.name in result.repaired else
                   "Adopted boot" if rec.name in result.booted else "Adopted")
            log.info("%s overlay '%s' at '%s'.", how, rec.name, rec.mountpoint,
                     extra=_fields(rec, Event.RECOVERED, OVERLAYD_RECOVERY=how.lower()))
        for name in result.cleaned:
            log.info("Removed the leftovers of overlay '%s'.", name,
                     extra={"OVERLAYD_NAME": name, "OVERLAYD_EVENT": Event.RECOVERED,
                            "OVERLAYD_RECOVERY": "removed"})
        for problem in result.problems:
            log.warning("Recovery: %s", problem)
        return result

    # -- reading --------------------------------------------------------------------------

    def list(self) -> list[Overlay]:
        return [self._overlays[n] for n in sorted(self._overlays)]

    def get(self, name: str) -> Overlay:
        try:
            return self._overlays[name]
        except KeyError:
            raise NoSuchOverlay(name) from None

    async def usage(self, name: str) -> UpperUsage:
        rec = self.get(name)
        return await self._blocking(self.host.usage, rec.tmpfs_dir)

    def fd_path(self, fd: int) -> str:
        """What an image fd refers to, for messages and polkit details."""
        return self.host.fd_path(fd)

    def usage_now(self, name: str) -> UpperUsage:
        """Usage of the upper, read inline: statvfs of a tmpfs does no I/O, so property
        reads may call it on the event loop. Zeros while the tmpfs is being replaced."""
        rec = self.get(name)
        try:
            return self.host.usage(rec.tmpfs_dir)
        except OverlaydError:
            return UpperUsage(size=rec.size, used=0, inodes_used=0)

    async def diff(self, name: str, created_usec: int | None = None
                   ) -> builtins.list[DiffEntry]:
        async with self._lock(name):
            rec = self._current(name, created_usec)
            pairs = await self._blocking(ops.diff, self.host, rec)
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
            async with self._create_lock:
                rec = await self._blocking(
                    ops.create, self.host, self.config, spec, self.list(),
                    owner_uid=owner_uid, now_usec=time.time_ns() // 1000)
        except OverlaydError as e:
            log.log(_failure_level(e), "Failed to create overlay '%s': %s", name, e,
                    extra={"OVERLAYD_NAME": name, "OVERLAYD_IMAGE": spec.image or "",
                           "OVERLAYD_MOUNTPOINT": spec.mountpoint or "",
                           "OVERLAYD_EVENT": Event.FAILED, "OVERLAYD_ACTION": "create",
                           "OVERLAYD_UID": owner_uid, "OVERLAYD_ERROR": e.dbus_name})
            raise
        finally:
            self._creating.discard(name)
        self._overlays[name] = rec
        log.info("Created overlay '%s' of '%s' at '%s'.", name, rec.image, rec.mountpoint,
                 extra=_fields(rec, Event.CREATED, uid=owner_uid))
        self._changed(name, rec)
        return rec

    async def commit(self, name: str, *, progress: Progress | None = None,
                     caller_uid: int = 0, created_usec: int | None = None) -> CommitStats:
        """CREATED_USEC, if given, must match: the caller was authorized for that overlay,
        not for another one of the same name made since."""
        async with self._lock(name):
            rec = self._current(name, created_usec)
            self._set_state(rec, OverlayState.COMMITTING)
            try:
                await self._save(rec)
                done = await self._blocking(ops.commit, self.host, rec, progress,
                                            as_uid=caller_uid)
            except OverlaydError as e:
                # ops.commit persisted the state it left; an early failure left it active.
                state = rec.state if rec.state is not OverlayState.COMMITTING \
                    else OverlayState.ACTIVE
                self._set_state(rec, state, str(e))
                log.log(_failure_level(e), "Failed to commit overlay '%s': %s", name, e,
                        extra=_fields(rec, Event.FAILED, uid=caller_uid, OVERLAYD_ACTION="commit",
                                      OVERLAYD_ERROR=e.dbus_name))
                raise
            self._in_background(done.free_old_upper)
            self._set_state(rec, OverlayState.ACTIVE)
        applied = done.applied
        stats = CommitStats(entries=applied.entries, bytes=applied.bytes, seconds=applied.seconds)
        log.info("Committed overlay '%s' into '%s': %d entries, %d bytes in %.3f s.", name,
                 rec.image, stats.entries, stats.bytes, stats.seconds,
                 extra=_fields(rec, Event.COMMITTED, uid=caller_uid,
                               OVERLAYD_ENTRIES=stats.entries,
                               OVERLAYD_BYTES=stats.bytes, OVERLAYD_SECONDS=f"{stats.seconds:.6f}"))
        return stats

    def _current(self, name: str, created_usec: int | None) -> Overlay:
        rec = self.get(name)
        if created_usec is not None and rec.created_usec != created_usec:
            raise NoSuchOverlay(name)  # replaced by a namesake while the caller waited
        return rec

    async def discard(self, name: str, *, force: bool = False, caller_uid: int = 0,
                      created_usec: int | None = None) -> None:
        async with self._lock(name):
            rec = self._current(name, created_usec)
            previous = rec.state
            self._set_state(rec, OverlayState.DISCARDING)
            try:
                await self._blocking(ops.teardown, self.host, rec, force=force)
            except OverlaydError as e:
                self._set_state(rec, previous if previous is not OverlayState.COMMITTING
                                else OverlayState.ACTIVE)
                log.log(_failure_level(e), "Failed to discard overlay '%s': %s", name, e,
                        extra=_fields(rec, Event.FAILED, uid=caller_uid,
                                      OVERLAYD_ACTION="discard", OVERLAYD_ERROR=e.dbus_name))
                raise
            del self._overlays[name]
            self._locks.pop(name, None)
        log.info("Discarded overlay '%s'%s.", name, " (forced)" if force else "",
                 extra=_fields(rec, Event.DISCARDED, uid=caller_uid))
        self._changed(name, None)

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

    async def _save(self, rec: Overlay) -> None:
        await self._blocking(self.host.write_file, f"{rec.base_dir}/overlay.json",
                             dump_record(rec))
