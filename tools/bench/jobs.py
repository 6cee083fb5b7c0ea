"""What jobs cost (issue 12): commit throughput with a Job and its progress against
without, in the engine; and how many PropertiesChanged a commit sends over the bus.

- *with a job*: ``OverlayManager.commit`` given a ``jobs.Job``'s ``report`` as progress
  and its cancel token, the job's ``notify`` hopping onto the event loop
  (``call_soon_threadsafe``) to compute its status there, as the daemon does; *without*:
  the plain commit. Alternating, on a fresh image each, best of ``--repeat`` (at least
  9); aim: within 2 % (ratio >= 0.98), for the big file and for the small files. Timed:
  the apply, where a job costs anything (the engine's own figure); the whole commit adds
  the final sync of the image, which a job does not touch and whose time is the disk's
  noise (both are in the JSON). The median of the ratios of the samples taken one after
  the other is noted too.
- *signals*: a daemon commits the small files through the bus (``Commit``) while a
  client counts the job's PropertiesChanged; aim: at most 4 a second of commit, plus 3
  (the start, the seal, the end), whatever the number of files.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from overlayd.bus.names import JOB_PREFIX
from overlayd.errors import OverlaydError
from overlayd.jobs import PROGRESS_INTERVAL, Job
from overlayd.manager import OverlayManager
from overlayd.model import parse_spec
from tools.bench.measures import COMMIT_NAME, Bench, drop_commit_overlay, engine_commit
from tools.bench.report import Row
from tools.bench.settings import BenchError, say
from tools.bench.workload import CommitJob, CommitTiming, big_job, image_mib, small_job

BUS_COMMIT_NAME = "bench-job"
# Samples of each side at least, whatever --repeat: the difference sought (2 %) is smaller
# than what one sample varies by on a shared machine.
MIN_SAMPLES = 9


async def commit_with_job(mgr: OverlayManager, image: Path, mnt: Path,
                          work: CommitJob) -> tuple[CommitTiming, int]:
    """engine_commit with a Job's progress and cancel token; and how often it woke the loop."""
    await mgr.create(parse_spec({"name": COMMIT_NAME, "image": str(image),
                                 "mountpoint": str(mnt), "size": work.tmpfs_size}))
    work.fill(mnt)
    os.sync()
    loop = asyncio.get_running_loop()
    job = Job(0, "commit", COMMIT_NAME, 0, time.time_ns() // 1000)
    woken = 0

    def flush() -> None:  # what the daemon does on the loop, minus the bus
        nonlocal woken
        woken += 1
        job.status(time.monotonic(), time.time_ns() // 1000)

    def begin() -> None:
        usage = mgr.usage_now(COMMIT_NAME)
        job.begin(usage.used, usage.inodes_used)

    def notify() -> None:  # from the worker thread
        loop.call_soon_threadsafe(flush)

    job.notify = notify
    t0 = time.perf_counter()
    stats = await mgr.commit(COMMIT_NAME, progress=job.report, cancel=job.token, started=begin)
    seconds = time.perf_counter() - t0
    work.check(mnt)
    await mgr.discard(COMMIT_NAME)
    return CommitTiming(seconds, stats.seconds), woken


async def throughput(bench: Bench, mgr: OverlayManager, work: CommitJob) -> Row:
    say(f"commit {work.label} with a job and without, "
        f"{max(bench.settings.repeat, MIN_SAMPLES)} x each, alternating")
    with_job: list[float] = []
    without: list[float] = []
    pairs: list[float] = []  # without / with, of two samples taken one after the other
    whole: dict[str, list[float]] = {"job": [], "plain": []}  # with the final sync
    woken: list[int] = []
    errors: list[str] = []
    size_mib = image_mib(bench.settings)
    for i in range(max(bench.settings.repeat, MIN_SAMPLES)):
        got = {"job": len(with_job), "plain": len(without)}
        for side in (("job", "plain") if i % 2 == 0 else ("plain", "job")):
            image = bench.image(f"jobs-{work.label}-{side}-{i}", size_mib)
            try:
                if side == "job":
                    timing, n = await commit_with_job(mgr, image, bench.paths.engine_mnt, work)
                    woken.append(n)
                    whole["job"].append(timing.seconds)
                    with_job.append(timing.apply_seconds or timing.seconds)
                else:
                    timing = await engine_commit(mgr, image, bench.paths.engine_mnt, work)
                    whole["plain"].append(timing.seconds)
                    without.append(timing.apply_seconds or timing.seconds)
            except (OverlaydError, BenchError) as e:
                errors.append(f"{side} sample {i + 1}: {e}")
                say(f"  {errors[-1]}")
                problems = await drop_commit_overlay(mgr)
                bench.problems += problems
                if problems:
                    break
            else:
                image.unlink()
        if len(with_job) > got["job"] and len(without) > got["plain"]:  # both, this round
            pairs.append(without[-1] / with_job[-1])
    bench.raw[f"jobs_{work.label}"] = {"with_job_apply_seconds": with_job,
                                       "without_apply_seconds": without,
                                       "with_job_seconds": whole["job"],
                                       "without_seconds": whole["plain"],
                                       "loop_wakeups": woken, "pair_ratios": pairs,
                                       "errors": errors}
    best_job, best_plain = min(with_job, default=None), min(without, default=None)
    amount, unit = ((work.data_bytes / (1 << 20), "MiB/s") if work.label == "big"
                    else (work.data_bytes / 4096, "files/s"))
    notes = [f"{len(errors)} samples failed; {errors[0]}"] if errors else []
    if pairs:
        notes.append(f"median of the {len(pairs)} paired ratios {statistics.median(pairs):.3f}")
    return Row(f"commit {work.label} with a job, applying (baseline: without)", unit,
               None if best_job is None else amount / best_job,
               None if best_plain is None else amount / best_plain, (">=", 0.98),
               note="; ".join(notes))


async def signals(bench: Bench) -> Row:
    """PropertiesChanged of the job of a bus commit of the small files."""
    work = small_job(bench.settings.small_files)
    say(f"PropertiesChanged of a job: Commit of {bench.settings.small_files} files over the bus")
    daemon = await bench.start_daemon()
    counted: dict[str, int] = {}
    ended = asyncio.Event()

    def on_signal(path: str, iface: str, member: str, body: list[Any]) -> None:
        if path.startswith(JOB_PREFIX) and member == "PropertiesChanged":
            counted[path] = counted.get(path, 0) + 1
        elif path.startswith(JOB_PREFIX) and member == "Completed":
            ended.set()

    try:
        client = daemon.client  # connected by start_daemon
        if client is None:
            raise BenchError("not connected to the daemon")
        await client.watch_jobs(on_signal)
        image = bench.image("jobs-signals", image_mib(bench.settings))
        await daemon.create(BUS_COMMIT_NAME, image, work.tmpfs_size)
        work.fill(daemon.mountpoint(BUS_COMMIT_NAME))
        os.sync()
        t0 = time.perf_counter()
        await client.commit(BUS_COMMIT_NAME)
        seconds = time.perf_counter() - t0
        await asyncio.wait_for(ended.wait(), 30)
        await daemon.discard(BUS_COMMIT_NAME)
        image.unlink()
    except (OverlaydError, BenchError, TimeoutError, OSError) as e:
        return Row("PropertiesChanged per commit (job)", "signals", None, None, None,
                   note=str(e))
    finally:
        bench.stop_daemons()
    count = sum(counted.values())
    bound = seconds / PROGRESS_INTERVAL + 3
    bench.raw["job_signals"] = {"properties_changed": count, "commit_seconds": seconds,
                                "files": bench.settings.small_files, "bound": bound}
    return Row(f"PropertiesChanged per commit of {bench.settings.small_files} files "
               f"({seconds:.1f} s)", "signals", float(count), None, ("<=", round(bound, 1)),
               absolute=True)


async def rows(bench: Bench, mgr: OverlayManager) -> list[Row]:
    return [await throughput(bench, mgr, big_job(bench.settings.big_mib)),
            await throughput(bench, mgr, small_job(bench.settings.small_files)),
            await signals(bench)]
