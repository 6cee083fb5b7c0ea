"""Following: the manager keeps up with the mount table and the FUSE servers.

``watch_mounts`` puts the mount table's changes (and, while it watches, each FUSE server's
pidfd) on the event loop; a batched check (``check_mounts``) then moves an overlay unmounted
from outside to UNMOUNTED and back to ACTIVE when it is mounted again, moves a FUSE overlay
whose server died to FAILED (its writes kept), and adopts a boot overlay whose mount units
came up after the start. Overlays busy with a call are left to that call.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time

from overlayd.engine.recover import adopt_late
from overlayd.errors import OverlaydError
from overlayd.events import Event
from overlayd.manager.core import ManagerCore, S, _fields
from overlayd.model import MergeEngine, OverlaySpec, OverlayState
from overlayd.transitions import transition

log = logging.getLogger("overlayd")


class Following(ManagerCore):
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
        self._check_again()

    def _on_mount_event(self) -> None:
        if self._watch is None:
            return
        # The event loop's own wait has consumed the change already (mountinfo reports
        # each change to one poll); draining takes what is left.
        self._watch.drain()
        self._check_again()

    def _check_again(self) -> None:
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
        fuse = [r for r in self._overlays.values() if r.engine is MergeEngine.FUSE]
        if self._watch is not None and any(self._lock(r.name).locked() and
                                           r.name not in self._servers for r in fuse):
            # A server not yet watched (its overlay made, committed or resized while this
            # check's mount event came) would die unseen: no mount event follows a FUSE
            # server's end (its dead mount stays), so look again once the call is done.
            self._check_again()
        for name in [r.name for r in fuse if r.state is S.ACTIVE
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
