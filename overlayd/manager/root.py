"""RootOverlay: the root file system on an overlay, which the initramfs made.

Adopted at every start as the overlay 'root' (no state record: the initramfs' state files
and the mount table say it all); it is never unmounted, so its writes are committed at
shutdown (by the exitrd) or thrown away at the next reboot; and the next boot's setting
(the root on an overlay or not) is written here. ``is_root`` is the core's: every part asks.
"""

from __future__ import annotations

import logging

from overlayd.errors import InvalidSpec, OverlaydError
from overlayd.events import Event
from overlayd.host.rootfs import ROOT_NAME, SIZE_RE
from overlayd.manager.core import S, _fields
from overlayd.manager.reading import Reading
from overlayd.model import Lower, LowerKind, Merged, Overlay, Upper, format_size

log = logging.getLogger("overlayd")


class RootOverlay(Reading):
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
