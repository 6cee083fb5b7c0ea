"""Jobs: long operations that others can watch and cancel, in the shape of udisks2's Job.

Pure: no I/O, no bus (the clocks can be replaced, for tests). The bus layer
(``bus/jobs.py``) puts each ``Job`` on the bus as ``org.overlayd.Overlayd1.Job``.

Threads. The operation runs in a worker thread, which calls ``Job.report`` after each
entry it applied (and during a large file): that stores two counts, raises ``Cancelled``
if a cancel was asked, and at most every ``interval`` seconds calls ``notify``, which the
bus layer sets to hop onto the event loop (``loop.call_soon_threadsafe``). Everything
else (``begin``, ``status``, the samples behind the rate) runs on the event loop. So a
commit of a million files makes a few calls onto the loop per second, not a million.

Cancelling. ``CancelToken.cancel`` (event loop) asks; the worker honours it at its next
safe point (``check``, from ``report``), or when it passes its last one (``seal``), after
which nothing can be cancelled any more: a cancel asked before the seal is always
honoured, one asked after it is refused, never silently dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from overlayd.errors import Cancelled
from overlayd.sizes import human as human  # re-exported: overlayctl takes it from sizes

# At most this often a job tells the event loop that it moved (PropertiesChanged of
# Progress, Rate, ExpectedEndTime): 4 times a second.
PROGRESS_INTERVAL = 0.25
# How much one entry weighs against a byte of data, for Progress: committing a small file
# costs about as much as copying this many bytes (tmpfs to a loop-mounted ext4).
ENTRY_WEIGHT = 64 << 10
# The rate and the expected end are measured over the last this many seconds.
RATE_WINDOW = 10.0
MIN_RATE_SPAN = 0.5  # seconds of samples before a rate is given (0 until then)


class CancelToken:
    """A cancel asked from one thread and honoured in another, at safe points."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asked = False
        self._sealed = False
        self.on_seal: Callable[[], None] | None = None  # told when it can no longer cancel

    @property
    def asked(self) -> bool:
        return self._asked

    @property
    def sealed(self) -> bool:
        return self._sealed

    def cancel(self) -> bool:
        """Ask for a cancel. False if it is too late: the operation passed its last safe
        point. Asking twice is fine (True both times)."""
        with self._lock:
            if self._sealed and not self._asked:
                return False
            self._asked = True
            return True

    def check(self) -> None:
        """At a safe point: stop here (raise Cancelled) if a cancel was asked."""
        if self._asked:
            raise Cancelled("The operation was cancelled.")

    def seal(self) -> None:
        """Past the last safe point: from now on a cancel is refused. One asked before is
        honoured here (Cancelled)."""
        with self._lock:
            self._sealed = True
            asked = self._asked
        if self.on_seal is not None:
            self.on_seal()
        if asked:
            raise Cancelled("The operation was cancelled.")


@dataclass(frozen=True)
class JobStatus:
    """What the Job's changing properties say at one moment."""

    progress: float
    progress_valid: bool
    bytes: int
    rate: int  # bytes per second, 0 if not known yet
    expected_end_usec: int  # 0 if not known
    cancelable: bool


@dataclass(eq=False)
class Job:
    id: int
    operation: str  # "commit"
    overlay: str
    started_by_uid: int
    start_usec: int
    token: CancelToken = field(default_factory=CancelToken)
    interval: float = PROGRESS_INTERVAL
    # Set by whoever shows the job: called from the worker, at most every INTERVAL.
    notify: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.monotonic
    # What the worker reports (plain ints: each store is atomic under the GIL).
    entries: int = 0
    bytes: int = 0
    # The estimate of the whole, known once the operation really started (``begin``).
    total_bytes: int = 0
    total_entries: int = 0
    started: bool = False
    finished: bool = False
    success: bool = False
    _next_notify: float = 0.0
    _samples: deque[tuple[float, int, float]] = field(default_factory=deque)

    # -- the worker's side --------------------------------------------------------------

    def report(self, entries: int, nbytes: int) -> None:
        """ENTRIES applied and NBYTES of data written so far: the ``Progress`` callback of
        the engine. Raises Cancelled when a cancel was asked: the caller is at a safe
        point."""
        self.entries = entries
        self.bytes = nbytes
        self.token.check()
        now = self.clock()
        if now >= self._next_notify:
            self._next_notify = now + self.interval
            self.notify()

    # -- the event loop's side ----------------------------------------------------------

    def begin(self, total_bytes: int, total_entries: int) -> None:
        """The operation starts now (it may have waited its turn), on this much data."""
        self.total_bytes = max(0, total_bytes)
        self.total_entries = max(0, total_entries)
        self.started = True

    def finish(self, success: bool) -> None:
        self.finished = True
        self.success = success

    def fraction(self) -> float:
        """Done so far, 0..1. Bytes and entries together, each entry weighing ENTRY_WEIGHT
        bytes, so that a tree of small files moves as steadily as one big file. Below 1
        until the job has finished: the totals are estimates."""
        if self.finished and self.success:
            return 1.0
        whole = self.total_bytes + self.total_entries * ENTRY_WEIGHT
        if not self.started or whole <= 0:
            return 0.0
        done = self.bytes + self.entries * ENTRY_WEIGHT
        return min(done / whole, 0.99)

    def status(self, now: float, now_usec: int) -> JobStatus:
        """The properties at NOW (monotonic) / NOW_USEC (wall clock), taking a sample for
        the rate. Called on the event loop, a few times a second at most."""
        progress = self.fraction()
        samples = self._samples
        if self.started and not self.finished:
            samples.append((now, self.bytes, progress))
            while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW:
                samples.popleft()
        rate = end = 0
        if len(samples) >= 2 and not self.finished:
            t0, b0, p0 = samples[0]
            t1, b1, p1 = samples[-1]
            span = t1 - t0
            if span >= MIN_RATE_SPAN:
                rate = max(0, int((b1 - b0) / span))
                if p1 > p0:
                    end = now_usec + int((1.0 - p1) * span / (p1 - p0) * 1e6)
        if self.finished:
            end = now_usec
        return JobStatus(progress=progress, progress_valid=self.started, bytes=self.total_bytes,
                         rate=rate, expected_end_usec=end,
                         cancelable=not self.finished and not self.token.sealed)


class Jobs:
    """The jobs running now, numbered from 1 for the daemon's life (like udisks2's)."""

    def __init__(self) -> None:
        self._next = 1
        self._jobs: dict[int, Job] = {}

    def start(self, operation: str, overlay: str, started_by_uid: int,
              start_usec: int) -> Job:
        job = Job(self._next, operation, overlay, started_by_uid, start_usec)
        self._next += 1
        self._jobs[job.id] = job
        return job

    def end(self, job: Job) -> None:
        self._jobs.pop(job.id, None)

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def running(self) -> list[Job]:
        return [self._jobs[i] for i in sorted(self._jobs)]

    def of_overlay(self, overlay: str) -> list[Job]:
        return [j for j in self.running() if j.overlay == overlay]
