"""Jobs on the bus: ``org.overlayd.Overlayd1.Job`` at ``/org/overlayd/Overlayd1/job/N``,
in the shape of udisks2's Job, so that GNOME Disks' and Cockpit's habits carry over.

Every commit runs as a job, the blocking ``Commit`` too (it waits for the job's end and
answers with its outcome); ``StartCommit`` answers with the job's path at once. A job is
announced with InterfacesAdded (from the manager object, like the overlays); it ends with
a last PropertiesChanged, ``Completed(success, message)`` and InterfacesRemoved.

Progress comes from a worker thread (``overlayd/jobs.py``): at most every
``PROGRESS_INTERVAL`` it hops onto the event loop, where ``JobRunner.flush`` sends what
changed, again at most that often (a timer catches up with the last change): a few
PropertiesChanged a second whatever the number of files.

While a job runs the daemon holds a logind inhibitor lock (``inhibit.py``).

No ``from __future__ import annotations`` here: dbus-next reads the signature strings
('s', 'a{sv}') from the annotations.
"""

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from dbus_next import Variant
from dbus_next import introspection as intr
from dbus_next.service import method, signal

from overlayd.bus.connection import CheapInterface
from overlayd.bus.errors import INTERNAL
from overlayd.bus.inhibit import Inhibitor, InhibitorLock
from overlayd.bus.names import (
    ACTION_CANCEL_JOB,
    ACTION_CANCEL_JOB_OTHER,
    JOB_IFACE,
    job_path,
    overlay_path,
)
from overlayd.bus.properties import (
    CONST,
    SIGNALLED,
    AnnotatedProperty,
    BusProperty,
    TableProperties,
    signalled,
    values,
    with_properties,
)
from overlayd.bus.spec import decode_options
from overlayd.errors import OverlaydError
from overlayd.events import NOTICE
from overlayd.jobs import PROGRESS_INTERVAL, Job, Jobs, JobStatus, human
from overlayd.model import CommitStats, CommitTarget, LayerFormat, Overlay

if TYPE_CHECKING:
    from overlayd.bus.auth import Caller
    from overlayd.bus.service import Service

log = logging.getLogger("overlayd.bus")

CANCEL_OPTIONS: dict[str, str] = {}


JobProperty = BusProperty["JobInterface"]  # CONST or SIGNALLED: a job has no LIVE row


JOB_PROPERTIES: tuple[JobProperty, ...] = (
    JobProperty("Bytes", "t", SIGNALLED, lambda j: j.status.bytes),
    JobProperty("Cancelable", "b", SIGNALLED, lambda j: j.status.cancelable),
    JobProperty("ExpectedEndTime", "t", SIGNALLED, lambda j: j.status.expected_end_usec),
    JobProperty("Objects", "ao", CONST, lambda j: [overlay_path(j.job.overlay)]),
    JobProperty("Operation", "s", CONST, lambda j: j.job.operation),
    JobProperty("Progress", "d", SIGNALLED, lambda j: j.status.progress),
    JobProperty("ProgressValid", "b", SIGNALLED, lambda j: j.status.progress_valid),
    JobProperty("Rate", "t", SIGNALLED, lambda j: j.status.rate),
    JobProperty("StartTime", "t", CONST, lambda j: j.job.start_usec),
    JobProperty("StartedByUID", "u", CONST, lambda j: j.job.started_by_uid),
)
SIGNALLED_JOB_PROPERTIES = signalled(JOB_PROPERTIES)
SIGNAL_ARGS = {"Completed": ("success", "message")}


def _now() -> tuple[float, int]:
    return time.monotonic(), time.time_ns() // 1000


@with_properties(JOB_PROPERTIES, lambda self: self)
class JobInterface(TableProperties, CheapInterface):
    property_table = JOB_PROPERTIES

    def __init__(self, runner: "JobRunner", job: Job) -> None:
        super().__init__(JOB_IFACE)
        self.runner = runner
        self.job: Job = job
        self.path = job_path(job.id)
        self.status: JobStatus = job.status(*_now())
        self.announced = self.signalled_values()
        self.task: asyncio.Future[OverlaydError | None] | None = None
        self.last_sent = 0.0  # monotonic time of the last PropertiesChanged
        self.timer: asyncio.TimerHandle | None = None
        self.gone = False
        self.rec: Overlay | None = None  # the overlay, as it was when the job started

    def describe(self, iface: intr.Interface) -> intr.Interface:
        iface.properties = [AnnotatedProperty(p) for p in JOB_PROPERTIES]
        for sig in iface.signals:
            for arg, name in zip(sig.args, SIGNAL_ARGS.get(sig.name, ()), strict=False):
                arg.name = name
        return iface

    def property_source(self) -> "JobInterface":
        return self

    def signalled_values(self) -> dict[str, Variant]:
        return values(SIGNALLED_JOB_PROPERTIES, self)

    @method()
    async def Cancel(self, options: "a{sv}"):
        await self.runner.cancel(self, options)

    @signal()
    def Completed(self) -> "bs":  # sent by JobRunner.complete; here for the introspection
        return [False, ""]


class JobRunner:
    """Starts jobs, keeps their objects in step, cancels them, ends them."""

    def __init__(self, svc: "Service") -> None:
        self.svc = svc
        self.jobs = Jobs()
        self.objects: dict[int, JobInterface] = {}
        self.inhibitor = Inhibitor(svc.bus)

    # -- starting and ending ------------------------------------------------------------

    def start_commit(self, rec: Overlay, caller: "Caller", *,
                     target: CommitTarget | None = None,
                     layer_format: LayerFormat = LayerFormat.EROFS,
                     operation: str = "commit") -> JobInterface:
        """Export a job for a commit of REC by CALLER, and start it (TARGET, LAYER_FORMAT:
        Commit's options; OPERATION "squash": a Squash of its layers, issue 14)."""
        loop = asyncio.get_running_loop()
        job = self.jobs.start(operation, rec.name, caller.uid, time.time_ns() // 1000)
        obj = JobInterface(self, job)
        obj.rec = rec

        def notify() -> None:  # from the worker thread
            if not obj.gone:
                # A loop that is closing only costs a progress update, never the commit.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self.flush, obj)

        job.notify = notify
        job.token.on_seal = notify  # Cancelable turns false
        self.objects[job.id] = obj
        self.svc.bus.export_object(obj.path, obj)
        obj.task = asyncio.ensure_future(self._commit(obj, rec, caller, target, layer_format))
        return obj

    async def _commit(self, obj: JobInterface, rec: Overlay, caller: "Caller",
                      target: CommitTarget | None = None,
                      layer_format: LayerFormat = LayerFormat.EROFS) -> OverlaydError | None:
        """Run the commit; the error it ended with, if any (also sent with Completed)."""
        job = obj.job
        lock = asyncio.ensure_future(self.inhibitor.take(
            f"Committing overlay '{rec.name}' into {rec.image}"))
        error: OverlaydError | None = None
        stats: CommitStats | None = None
        try:
            if job.operation == "squash":
                stats = await self.svc.manager.squash(
                    rec.name, layer_format, progress=job.report, cancel=job.token,
                    started=lambda: self._begin(obj), caller_uid=caller.uid,
                    created_usec=rec.created_usec,
                    target=target or CommitTarget.LAYER)
            else:
                stats = await self.svc.manager.commit(
                    rec.name, progress=job.report, cancel=job.token,
                    started=lambda: self._begin(obj), caller_uid=caller.uid,
                    created_usec=rec.created_usec, target=target, layer_format=layer_format)
        except OverlaydError as e:
            error = e
        except Exception as e:  # a bug: logged once here, the caller gets Failed
            log.error("Internal error in job %d: %r", job.id, e, exc_info=e)
            error = OverlaydError(INTERNAL)
        finally:
            lock.add_done_callback(_release)
        self.complete(obj, error, stats)
        return error

    def _begin(self, obj: JobInterface) -> None:
        """The commit's turn has come: the upper's usage now is the estimate of the whole."""
        usage = self.svc.manager.usage_now(obj.job.overlay)
        obj.job.begin(usage.used, usage.inodes_used)
        self.flush(obj)

    def complete(self, obj: JobInterface, error: OverlaydError | None,
                 stats: CommitStats | None) -> None:
        job = obj.job
        job.finish(error is None)
        self.flush(obj, force=True)
        if error is None and stats is not None:
            verb = "Squashed" if job.operation == "squash" else "Committed"
            message = (f"{verb} {stats.entries} entries, {human(stats.bytes)} of data "
                       f"in {stats.seconds:.1f} s.")
        else:
            message = str(error) if error is not None else ""
        obj.gone = True
        if obj.timer is not None:
            obj.timer.cancel()
        self.svc.bus.emit_signal(obj.path, JOB_IFACE, "Completed", "bs",
                                 [error is None, message])
        self.svc.bus.unexport_object(obj.path, obj)
        self.objects.pop(job.id, None)
        self.jobs.end(job)

    # -- progress -----------------------------------------------------------------------

    def flush(self, obj: JobInterface, *, force: bool = False) -> None:
        """Send what changed, at most every PROGRESS_INTERVAL (FORCE: now, the last time)."""
        if obj.gone:
            return
        mono, usec = _now()
        wait = obj.last_sent + PROGRESS_INTERVAL - mono
        if wait > 0 and not force:
            if obj.timer is None:
                obj.timer = asyncio.get_running_loop().call_later(wait, self._catch_up, obj)
            return
        if obj.timer is not None:
            obj.timer.cancel()
            obj.timer = None
        obj.status = obj.job.status(mono, usec)
        now = obj.signalled_values()
        changed = {k: v for k, v in now.items() if obj.announced.get(k) != v}
        obj.announced = now
        if changed:
            obj.last_sent = mono
            self.svc.bus.emit_properties_changed(obj.path, JOB_IFACE, changed)

    def _catch_up(self, obj: JobInterface) -> None:
        obj.timer = None
        self.flush(obj)

    # -- cancelling ---------------------------------------------------------------------

    async def cancel(self, obj: JobInterface, options: dict[str, Variant]) -> None:
        decode_options(options, CANCEL_OPTIONS, "Cancel")
        job = obj.job
        caller = await self.svc.caller()
        own = caller.uid == job.started_by_uid
        rec = obj.rec
        details = {"overlay": job.overlay, "operation": job.operation, "job": obj.path,
                   "image": rec.image if rec else "", "mountpoint": rec.mountpoint if rec else ""}
        await self.svc.require(ACTION_CANCEL_JOB if own else ACTION_CANCEL_JOB_OTHER, caller,
                               details)
        if job.finished:
            raise OverlaydError(f"Job {job.id} ({job.operation} of overlay '{job.overlay}') "
                                "has finished already.")
        if not job.token.cancel():
            raise OverlaydError(f"Job {job.id} ({job.operation} of overlay '{job.overlay}') "
                                "cannot be cancelled any more: every change is in the image, "
                                "and it is finishing.")
        log.log(NOTICE, "Job %d (%s of overlay '%s', started by uid %d) cancelled by uid %d.",
                job.id, job.operation, job.overlay, job.started_by_uid, caller.uid,
                extra={"OVERLAYD_NAME": job.overlay, "OVERLAYD_UID": caller.uid,
                       "OVERLAYD_JOB": job.id, "OVERLAYD_ACTION": "cancel"})


def _release(task: "asyncio.Future[InhibitorLock]") -> None:
    """The job ended: give the lock back, whenever logind answered."""
    if task.cancelled():
        return
    if task.exception() is None:
        task.result().release()
    else:  # take() answers every failure with an empty lock: this is a bug
        log.warning("No inhibitor lock: %r", task.exception())

