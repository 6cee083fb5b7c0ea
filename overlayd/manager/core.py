"""ManagerCore: every field of the overlays' state, and the one way to change it.

The registry of overlays (frozen records, replaced on every change), a lock per overlay
(calls on one overlay are serialized), the Creates under way and the RAM they reserve, the
claimed mount points, the shared lowers, the listeners, the work in worker threads, and
what following the mount table keeps: every field is made in ``__init__``, here, and
nowhere else. A state changes only through ``transitions.transition``: in ``_move``
(checked against the table, put in the registry, announced), or, for a record not yet in
the registry (recovered, adopted, built), just before it is put there. Records are saved
through the one ``StateStore`` (``store``; ``_save_quietly`` from a worker). ``_blocking``
runs the engine's procedures in worker threads and is the edge where the daemon's own
paths are taken out of error messages. The other parts (see ``__init__.py``) decide when
to move, never how.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from overlayd.claims import MountpointClaims
from overlayd.config import DaemonConfig
from overlayd.errors import CommitFailed, MountFailed, NoSuchOverlay, OverlaydError
from overlayd.events import NOTICE, Event
from overlayd.host.ports import Host, MountWatch
from overlayd.host.rootfs import ROOT_NAME, RootFs, RootInfo
from overlayd.layout import Layout, hide_internal_paths
from overlayd.model import Overlay, OverlaySpec, OverlayState
from overlayd.sharing import SharedLowers
from overlayd.store import StateStore
from overlayd.transitions import transition
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


class ManagerCore:
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
        places stay): its defaults and limits apply to what is asked from now on, and a new
        usage_interval to the image space's cache (read afresh)."""
        if config.usage_interval != self.config.usage_interval:
            self._spaces = SpaceCache(self.host.system.fs_space, time.monotonic,
                                      config.usage_interval)
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

    def _in_background(self, fn: Callable[[], None]) -> None:
        """Run FN in a worker thread without making the caller wait; ``aclose`` waits."""
        fut = asyncio.get_running_loop().run_in_executor(None, fn)
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)

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

    def get(self, name: str) -> Overlay:
        try:
            return self._overlays[name]
        except KeyError:
            raise NoSuchOverlay(name) from None

    def _current(self, name: str, created_usec: int | None) -> Overlay:
        rec = self.get(name)
        if created_usec is not None and rec.created_usec != created_usec:
            raise NoSuchOverlay(name)  # replaced by a namesake while the caller waited
        return rec

    def is_root(self, name: str) -> bool:
        """Whether NAME is the root file system's overlay (made by the initramfs)."""
        return name == ROOT_NAME and self.root_info is not None

    def _log_failure(self, rec: Overlay, action: str, e: OverlaydError, uid: int) -> None:
        log.log(_failure_level(e), "Failed to %s overlay '%s': %s", action, rec.name, e,
                extra=_fields(rec, Event.FAILED, uid=uid, OVERLAYD_ACTION=action,
                              OVERLAYD_ERROR=e.dbus_name))

    async def aclose(self) -> None:
        """Wait for work in worker threads (calls whose callers are gone, freeing committed
        uppers). Overlays stay as they are."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
