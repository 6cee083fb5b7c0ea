"""The service behind the bus objects: keeping them in step with the OverlayManager,
authorization, and the operations the Manager and Overlay objects share.

Each operation: decode the arguments (spec.py: InvalidArgs for a wrong shape, InvalidSpec
for a bad value), look the overlay up, identify the caller and authorize (before anything
changes), then hand over to the OverlayManager. Errors become D-Bus errors in
``connection.OverlaydBus._reply``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dbus_next import Variant

from overlayd.bus.auth import Authorizer, Caller, CallerCache
from overlayd.bus.connection import OverlaydBus, current_message
from overlayd.bus.errors import ECHO_LIMIT, AccessDenied, InvalidArgs, shown
from overlayd.bus.jobs import JobRunner
from overlayd.bus.names import (
    ACTION_COMMIT,
    ACTION_CREATE,
    ACTION_DISCARD,
    ACTION_MANAGE_OTHERS,
    ACTION_ROOT,
    MANAGER_IFACE,
    OVERLAY_IFACE,
    ROOT_PATH,
    overlay_path,
)
from overlayd.bus.objects import ManagerInterface, OverlayInterface, signalled_values
from overlayd.bus.spec import (
    COMMIT_OPTIONS,
    DISCARD_OPTIONS,
    RECONFIGURE_OPTIONS,
    REVERT_OPTIONS,
    ROOT_AT_BOOT_OPTIONS,
    SQUASH_OPTIONS,
    decode_options,
    decode_settings,
    decode_spec,
)
from overlayd.bus.usage import UsageWatch
from overlayd.errors import InvalidSpec, NoSuchOverlay
from overlayd.events import NOTICE, Event
from overlayd.manager import OverlayManager
from overlayd.model import CommitTarget, LayerFormat, Overlay

log = logging.getLogger("overlayd.bus")


class Service:
    """Keeps the bus objects in step with the OverlayManager."""

    def __init__(self, bus: OverlaydBus, manager: OverlayManager, auth: Authorizer) -> None:
        self.bus = bus
        self.manager = manager
        self.auth = auth
        self.manager_iface = ManagerInterface(self)
        self.objects: dict[str, OverlayInterface] = {}
        self.callers = CallerCache()
        self.jobs = JobRunner(self)
        self.usage = UsageWatch(manager, manager.config, self._announce)
        self._total_announced = -1
        self._limit_announced = -1
        manager.subscribe(self._on_change)

    def export_all(self) -> None:
        """The manager and every overlay there is, before the name is owned: without
        InterfacesAdded, since nobody can be subscribed to a name nobody owns (clients
        call GetManagedObjects), and a burst of them is what made restarts fail. Then
        the usage of every overlay is watched."""
        self.bus.export_object(ROOT_PATH, self.manager_iface, announce=False)
        self._total_announced = self.manager_iface.upper_size_total()
        self._limit_announced = self.manager.total_limit()
        for rec in self.manager.list():
            self._export(rec, announce=False)
        self.usage.start()

    def close(self) -> None:
        self.usage.stop()

    def config_changed(self) -> None:
        """The manager's configuration was reloaded: the usage levels follow it, and
        MaxTotalSize is announced if max_total_size changed."""
        self.usage.config = self.manager.config
        limit = self.manager.total_limit()
        if limit != self._limit_announced:
            self._limit_announced = limit
            self.bus.emit_properties_changed(ROOT_PATH, MANAGER_IFACE,
                                             {"MaxTotalSize": Variant("t", limit)})

    def _export(self, rec: Overlay, *, announce: bool) -> None:
        self.usage.look(rec, announce=False)
        obj = self.objects[rec.name] = OverlayInterface(self, rec.name)
        obj.announced = signalled_values(self.manager, rec, self.usage.level(rec.name))
        self.bus.export_object(overlay_path(rec.name), obj, announce=announce)

    def _on_change(self, name: str, rec: Overlay | None) -> None:
        obj = self.objects.get(name)
        if rec is None:
            self.usage.forget(name)
            if obj is not None:
                del self.objects[name]
                self.bus.unexport_object(overlay_path(name), obj)
            self._announce_total()
            return
        if obj is None:
            self._export(rec, announce=True)
            self._announce_total()
            return
        self.usage.look(rec, announce=False)  # after a commit: ok at once, not in 2 s
        self._announce(name, rec)

    def _announce(self, name: str, rec: Overlay | None = None) -> None:
        """PropertiesChanged of what changed in NAME's signalled properties."""
        obj = self.objects.get(name)
        if obj is None:
            return
        rec = rec if rec is not None else self.manager.get(name)
        now = signalled_values(self.manager, rec, self.usage.level(name))
        changed = {k: v for k, v in now.items() if obj.announced.get(k) != v}
        obj.announced = now
        if changed:
            self.bus.emit_properties_changed(overlay_path(name), OVERLAY_IFACE, changed)
        if "UpperSize" in changed:  # a Reconfigure resized it: the total moved too
            self._announce_total()

    def _announce_total(self) -> None:
        """PropertiesChanged of the Manager's UpperSizeTotal, when an overlay came, went or
        was resized."""
        total = self.manager_iface.upper_size_total()
        if total != self._total_announced:
            self._total_announced = total
            self.bus.emit_properties_changed(ROOT_PATH, MANAGER_IFACE,
                                             {"UpperSizeTotal": Variant("t", total)})

    def lookup(self, name: str) -> Overlay:
        if len(name) > ECHO_LIMIT:  # no name is that long; the reply shows its start only
            raise NoSuchOverlay(shown(name))
        return self.manager.get(name)

    async def caller(self) -> Caller:
        return await self.callers.identify(self.bus, current_message.get())

    async def authorize(self, action: str, rec: Overlay, caller: Caller,
                        message: str | None = None) -> None:
        """ACTION (and manage-others for another uid's overlay) on REC for CALLER; MESSAGE:
        what the agent shows for ACTION, when the call is not what ACTION's own says."""
        details = {"overlay": rec.name, "image": rec.image, "mountpoint": rec.mountpoint}
        if rec.owner_uid != caller.uid:
            await self.require(ACTION_MANAGE_OTHERS, caller, details)
        await self.require(action, caller,
                           details if message is None else details | {"polkit.message": message})

    async def require(self, action: str, caller: Caller, details: dict[str, str]) -> None:
        """AUTH.require, with each refusal in the journal as a 'denied' event."""
        try:
            await self.auth.require(action, caller, details)
        except AccessDenied as e:
            log.log(NOTICE, "Denied %s to uid %d: %s", action, caller.uid, e, extra={
                "OVERLAYD_EVENT": Event.DENIED, "OVERLAYD_ACTION": action,
                "OVERLAYD_UID": caller.uid, "OVERLAYD_NAME": details.get("overlay"),
                "OVERLAYD_IMAGE": details.get("image"),
                "OVERLAYD_MOUNTPOINT": details.get("mountpoint")})
            raise

    # -- the operations, shared by the Manager and the Overlay objects -------------------

    async def create(self, name: str, spec: dict[str, Variant]) -> str:
        parsed = decode_spec(name, spec)
        caller = await self.caller()
        image = parsed.image or "" if parsed.image_fd is None else \
            self.manager.fd_path(parsed.image_fd)  # fd 0 is an fd too
        details = {"overlay": parsed.name, "image": image,
                   "mountpoint": parsed.mountpoint or ""}
        await self.require(ACTION_CREATE, caller, details)
        await self.manager.create(parsed, owner_uid=caller.uid)
        return overlay_path(parsed.name)

    async def commit(self, name: str, options: dict[str, Variant]) -> None:
        """As a job others can watch; the caller waits for its end. The root overlay with
        at_shutdown: recorded for the shutdown, no job."""
        opts = decode_options(options, COMMIT_OPTIONS, "Commit")
        rec = self.lookup(name)
        caller = await self.caller()
        await self.authorize(ACTION_COMMIT, rec, caller)
        target, fmt = commit_target(opts)
        if opts.get("at_shutdown"):
            if target is CommitTarget.LAYER:
                raise InvalidSpec("A commit at shutdown goes into the image; it takes no "
                                  "target 'layer'.", "target")
            await self.manager.request_commit_at_shutdown(name, True, caller_uid=caller.uid)
            return
        job = self.jobs.start_commit(rec, caller, target=target, layer_format=fmt)
        assert job.task is not None
        # Shielded: a caller gone (or the daemon stopping) does not stop the commit.
        error = await asyncio.shield(job.task)
        if error is not None:
            raise error

    async def start_commit(self, name: str, options: dict[str, Variant]) -> str:
        """As commit, answering at once with the job's object path."""
        opts = decode_options(options, COMMIT_OPTIONS, "StartCommit")
        rec = self.lookup(name)
        caller = await self.caller()
        await self.authorize(ACTION_COMMIT, rec, caller)
        if opts.get("at_shutdown"):  # nothing runs now, so there is no job to watch
            raise InvalidArgs("StartCommit does not take 'at_shutdown'; use Commit.")
        target, fmt = commit_target(opts)
        return self.jobs.start_commit(rec, caller, target=target, layer_format=fmt).path

    async def squash(self, name: str, options: dict[str, Variant]) -> None:
        """Merge the overlay's layer files into one, as a job (Operation "squash"); the
        caller waits for its end, as for Commit."""
        opts = decode_options(options, SQUASH_OPTIONS, "Squash")
        target, fmt = commit_target(opts)
        rec = self.lookup(name)
        caller = await self.caller()
        await self.authorize(ACTION_COMMIT, rec, caller)
        job = self.jobs.start_commit(rec, caller, target=target, layer_format=fmt,
                                     operation="squash")
        assert job.task is not None
        error = await asyncio.shield(job.task)
        if error is not None:
            raise error

    async def revert(self, name: str, options: dict[str, Variant]) -> None:
        opts = decode_options(options, REVERT_OPTIONS, "Revert")
        rec = self.lookup(name)
        caller = await self.caller()
        await self.authorize(ACTION_COMMIT, rec, caller)
        await self.manager.revert(name, discard=bool(opts.get("discard", False)),
                                  caller_uid=caller.uid, created_usec=rec.created_usec)

    async def discard(self, name: str, options: dict[str, Variant]) -> None:
        opts = decode_options(options, DISCARD_OPTIONS, "Discard")
        rec = self.lookup(name)
        caller = await self.caller()
        await self.authorize(ACTION_DISCARD, rec, caller)
        if opts.get("at_shutdown") and not self.manager.is_root(name):
            await self.manager.request_commit_at_shutdown(name, False, caller_uid=caller.uid)
        await self.manager.discard(name, force=bool(opts.get("force", False)),
                                   caller_uid=caller.uid, created_usec=rec.created_usec)

    async def reconfigure(self, name: str, spec: dict[str, Variant],
                          options: dict[str, Variant]) -> list[Any]:
        """Apply SPEC to the live overlay: (the keys changed now, {key: why} of those that
        differ but cannot change while it is mounted). polkit: create's action, since the
        one thing that changes live is how much RAM the overlay may pin, which is what
        Create grants (and manage-others for someone else's overlay)."""
        decode_options(options, RECONFIGURE_OPTIONS, "Reconfigure")
        settings = decode_settings(spec)
        rec = self.lookup(name)
        caller = await self.caller()
        await self.authorize(ACTION_CREATE, rec, caller, message=(
            f'Authentication is required to change the RAM for the writes of overlay '
            f'"{rec.name}" (of {rec.image})'))
        plan = await self.manager.reconfigure(name, settings, caller_uid=caller.uid,
                                              created_usec=rec.created_usec)
        return [sorted(plan.live), dict(sorted(plan.fixed.items()))]

    async def set_root_at_boot(self, enabled: bool, options: dict[str, Variant]) -> None:
        opts = decode_options(options, ROOT_AT_BOOT_OPTIONS, "SetRootOverlayAtBoot")
        caller = await self.caller()
        await self.require(ACTION_ROOT, caller, {"overlay": "root",
                                                 "enabled": "true" if enabled else "false"})
        await self.manager.set_root_at_boot(enabled, opts.get("size"), caller_uid=caller.uid)

    async def diff(self, name: str) -> list[list[str]]:
        rec = self.lookup(name)
        caller = await self.caller()
        if caller.uid != rec.owner_uid:  # one's own overlay needs no action
            await self.require(ACTION_MANAGE_OTHERS, caller, {"overlay": rec.name})
        return [[d.path, d.kind] for d in await self.manager.diff(name, rec.created_usec)]


def commit_target(opts: dict[str, Any]) -> tuple[CommitTarget | None, LayerFormat]:
    """Commit's options target and layer_format (issue 14); a bad value is InvalidSpec."""
    target: CommitTarget | None = None
    if "target" in opts:
        try:
            target = CommitTarget(opts["target"])
        except ValueError:
            raise InvalidSpec(f"Invalid 'target': '{shown(opts['target'])}'; use 'image' or "
                              "'layer'.", "target") from None
    try:
        fmt = LayerFormat(opts.get("layer_format", LayerFormat.EROFS.value))
    except ValueError:
        raise InvalidSpec(f"Invalid 'layer_format': '{shown(opts['layer_format'])}'; use "
                          "'erofs' or 'squashfs'.", "layer_format") from None
    if "layer_format" in opts and target is CommitTarget.IMAGE:
        raise InvalidSpec("The option 'layer_format' is for a commit with target 'layer'.",
                          "layer_format")
    return target, fmt
