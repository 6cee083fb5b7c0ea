"""RAM running out, seen before it happens: each overlay's ``UpperUsage`` level.

One periodic task looks at every live overlay every ``usage_interval`` seconds (one
statvfs each, on the event loop: a tmpfs answers from memory; ``LOOKS_PER_TURN`` at a
time, so that a call never waits for a whole sweep of a thousand) and classifies it
(``overlayd/usage.py``). A change of level is announced with PropertiesChanged; a rise is
also a journal entry of its own MESSAGE_ID (``Event.USAGE``), at warning for ``critical``
and ``full``. An overlay that is being committed or discarded keeps its last level until
it is active again: its tmpfs is being replaced, and would read as empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from overlayd.config import DaemonConfig
from overlayd.errors import NoSuchOverlay
from overlayd.events import NOTICE, Event
from overlayd.manager import OverlayManager
from overlayd.model import Overlay, OverlayState
from overlayd.usage import UsageLevel, level, percent

log = logging.getLogger("overlayd")

WORDS = {UsageLevel.HIGH: "is running low", UsageLevel.CRITICAL: "is almost full",
         UsageLevel.FULL: "is full: writers get 'No space left on device'"}
Announce = Callable[[str], None]  # an overlay's level changed: announce its properties
LOOKS_PER_TURN = 50  # about a millisecond of the event loop's time


class UsageWatch:
    def __init__(self, manager: OverlayManager, config: DaemonConfig,
                 announce: Announce) -> None:
        self.manager = manager
        self.config = config
        self.announce = announce
        self.levels: dict[str, UsageLevel] = {}
        self._task: asyncio.Task[None] | None = None

    def level(self, name: str) -> str:
        return str(self.levels.get(name, UsageLevel.OK))

    def look(self, rec: Overlay, *, announce: bool = True) -> None:
        """Read REC's usage now; announce a change (ANNOUNCE), log a rise."""
        if rec.state is not OverlayState.ACTIVE:
            return
        usage = self.manager.usage_now(rec.name)
        new = level(usage, self.config)
        old = self.levels.get(rec.name)
        self.levels[rec.name] = new
        if old == new:
            return
        if announce and old is not None:
            self.announce(rec.name)
        if new.rank > (old.rank if old is not None else 0):
            prio = logging.WARNING if new.rank >= UsageLevel.CRITICAL.rank else NOTICE
            log.log(prio, "The RAM of overlay '%s' %s (%d%% of %d bytes used); commit to "
                    "empty it.", rec.name, WORDS[new], percent(usage), usage.size,
                    extra={"OVERLAYD_EVENT": Event.USAGE, "OVERLAYD_NAME": rec.name,
                           "OVERLAYD_IMAGE": rec.image, "OVERLAYD_MOUNTPOINT": rec.mountpoint,
                           "OVERLAYD_USAGE": str(new), "OVERLAYD_PERCENT": percent(usage),
                           "OVERLAYD_UPPER_USED": usage.used,
                           "OVERLAYD_UPPER_SIZE": usage.size})

    def forget(self, name: str) -> None:
        self.levels.pop(name, None)

    async def look_at_all(self) -> None:
        """Look at every overlay, giving the event loop back between turns; one that went
        (or changed) meanwhile is taken as it is now."""
        names = [rec.name for rec in self.manager.list()]
        for i, name in enumerate(names):
            if i and i % LOOKS_PER_TURN == 0:
                await asyncio.sleep(0)
            try:
                rec = self.manager.get(name)
            except NoSuchOverlay:
                continue
            self.look(rec)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.usage_interval)
            try:
                await self.look_at_all()
            except Exception as e:  # a look that fails must not end the watch
                with contextlib.suppress(Exception):
                    log.warning("Cannot look at the usage of the overlays: %s", e)
