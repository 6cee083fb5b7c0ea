"""The run's shared state, and the measurements with a util-linux or cp baseline: the
create / write / discard cycle and the two commits."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from overlayd.bus.names import overlay_path
from overlayd.config import DaemonConfig
from overlayd.errors import OverlaydError
from overlayd.manager import OverlayManager
from overlayd.model import parse_spec
from tools.bench.baseline import Tracker, cp_commit, util_linux_cycle
from tools.bench.daemon import Daemon
from tools.bench.report import Row, cycle_rows
from tools.bench.settings import CYCLE_TMPFS, WARMUP_CYCLES, BenchError, Paths, Settings, say
from tools.bench.workload import (
    CommitJob,
    CommitTiming,
    big_job,
    image_mib,
    make_image,
    small_job,
    write_small,
)

CYCLE_NAME = "bench-cycle"
BUS_CYCLE_NAME = "bench-bus-cycle"
COMMIT_NAME = "bench-commit"


class Bench:
    """What one run made and found: its daemons, the baseline's tracker, the raw figures."""

    def __init__(self, settings: Settings, paths: Paths) -> None:
        self.settings = settings
        self.paths = paths
        self.tracker = Tracker()
        self.config = DaemonConfig(runtime_dir=paths.run, default_size=CYCLE_TMPFS,
                                   layer_dir=paths.root / "layers")
        self.bus_config = DaemonConfig(runtime_dir=paths.busrun)  # the daemons', for cleanup
        self.daemons: list[Daemon] = []
        self.problems: list[str] = []  # met on the way, not fatal: warnings at the end
        self.raw: dict[str, Any] = {}

    def image(self, name: str, size_mib: int) -> Path:
        return make_image(self.paths.images / f"{name}.img", size_mib)

    def new_daemon(self, *, discard_on_exit: bool = True) -> Daemon:
        daemon = Daemon(self.paths, discard_on_exit=discard_on_exit)
        self.daemons.append(daemon)  # before it starts: cleanup stops even a half-started one
        return daemon

    async def start_daemon(self, *, discard_on_exit: bool = True) -> Daemon:
        daemon = self.new_daemon(discard_on_exit=discard_on_exit)
        daemon.start()
        await daemon.connect()
        await daemon.list_overlays()  # it answers: past its ready line, its handlers are set
        return daemon

    def stop_daemons(self) -> None:
        for daemon in self.daemons:
            self.problems += daemon.stop()

    # -- the cycle --------------------------------------------------------------------

    async def cycles(self, mgr: OverlayManager) -> list[Row]:
        n = self.settings.cycles
        say(f"cycles: {n} each (after {WARMUP_CYCLES} warm-up), engine, bus and util-linux "
            "interleaved")
        engine_img, util_img = self.image("cycle-engine", 64), self.image("cycle-util", 64)
        engine: list[float] = []
        bus: list[float] = []
        util: list[float] = []
        daemon = await self.start_daemon()
        try:
            await check_bus_cycle(daemon, engine_img)
            os.sync()
            for i in range(WARMUP_CYCLES + n):
                e = await engine_cycle(mgr, engine_img, self.paths.engine_mnt)
                b = await bus_cycle(daemon, engine_img)
                u = util_linux_cycle(self.tracker, util_img, self.paths)
                if i >= WARMUP_CYCLES:
                    engine.append(e)
                    bus.append(b)
                    util.append(u)
        finally:
            self.stop_daemons()
        self.raw["cycle_seconds"] = {"engine": engine, "bus": bus, "util_linux": util}
        return cycle_rows(engine, bus, util)

    # -- the commits ------------------------------------------------------------------

    async def big(self, mgr: OverlayManager) -> Row:
        mib = self.settings.big_mib
        say(f"commit of one {mib} MiB file, {self.settings.repeat} x engine and "
            "cp -a + sync, alternating")
        engine, cp, note = await self.commit_pairs(mgr, big_job(mib))
        return Row(f"commit 1 x {mib} MiB", "MiB/s", rate(mib, engine), rate(mib, cp),
                   (">=", 0.8), note=note)

    async def small(self, mgr: OverlayManager) -> Row:
        count = self.settings.small_files
        say(f"commit of {count} files of 4 KiB, {self.settings.repeat} x engine and "
            "cp -a + sync, alternating")
        engine, cp, note = await self.commit_pairs(mgr, small_job(count))
        return Row(f"commit {count} x 4 KiB", "files/s", rate(count, engine), rate(count, cp),
                   (">=", 1.0), note=note)

    async def commit_pairs(self, mgr: OverlayManager,
                           job: CommitJob) -> tuple[float | None, float | None, str]:
        """Best seconds of the engine's commit and of cp + sync (None if every sample of
        a side failed), each on a fresh image per sample, the order alternating so that
        warm-up effects hit both sides; and a note on the samples that failed."""
        engine: list[CommitTiming] = []
        cp: list[CommitTiming] = []
        errors: list[str] = []
        size_mib = image_mib(self.settings)
        order = [(i, side) for i in range(self.settings.repeat)
                 for side in (("engine", "cp") if i % 2 == 0 else ("cp", "engine"))]
        for i, side in order:
            image = self.image(f"{job.label}-{side}-{i}", size_mib)
            try:
                if side == "engine":
                    engine.append(await engine_commit(mgr, image, self.paths.engine_mnt,
                                                      job))
                else:
                    cp.append(cp_commit(self.tracker, image, self.paths, job))
            except (OverlaydError, BenchError) as e:  # a figure, not a crash
                errors.append(f"{side} sample {i + 1}: {e}")
                say(f"  {errors[-1]}")
                problems = self.tracker.undo() if side == "cp" else \
                    await drop_commit_overlay(mgr)
                self.problems += problems
                if problems:  # what is left would spoil every later sample
                    break
            else:
                image.unlink()  # sparse, but up to the data written: keep the disk free
        engine_s, cp_s = [t.seconds for t in engine], [t.seconds for t in cp]
        self.raw[job.label] = {
            "engine_seconds": engine_s,
            "engine_apply_seconds": [t.apply_seconds for t in engine],
            "cp_seconds": cp_s,
            "errors": errors,
        }
        if engine_s and cp_s:
            self.raw[job.label]["median_ratio"] = (statistics.median(cp_s)
                                                   / statistics.median(engine_s))
        note = "" if not errors else f"{len(errors)} samples failed; {errors[0]}"
        return min(engine_s, default=None), min(cp_s, default=None), note


def rate(amount: float, seconds: float | None) -> float | None:
    return None if seconds is None else amount / seconds


async def drop_commit_overlay(mgr: OverlayManager) -> list[str]:
    """After a failed commit sample: discard its overlay, with force (it may be failed)."""
    if not any(rec.name == COMMIT_NAME for rec in mgr.list()):
        return []
    try:
        await mgr.discard(COMMIT_NAME, force=True)
    except OverlaydError as e:
        return [f"discarding '{COMMIT_NAME}' after its failed commit: {e}"]
    return []


async def engine_cycle(mgr: OverlayManager, image: Path, mnt: Path | None = None, *,
                       name: str = CYCLE_NAME, **keys: str) -> float:
    """Seconds of one cycle in-process: Create (of 64 MiB, at MNT or the default mount
    point, with more spec KEYS such as upper or engine), a small write, Discard."""
    t0 = time.perf_counter()
    spec: dict[str, object] = {"name": name, "image": str(image), "size": CYCLE_TMPFS, **keys}
    if mnt is not None:
        spec["mountpoint"] = str(mnt)
    rec = await mgr.create(parse_spec(spec))
    write_small(Path(rec.mountpoint))
    await mgr.discard(name)
    return time.perf_counter() - t0


async def bus_cycle(daemon: Daemon, image: Path) -> float:
    """Create, the write, Discard: two calls, as the engine's cycle. The mount point is
    the default one, computed, not read from the MountPoint property (checked once)."""
    t0 = time.perf_counter()
    await daemon.create(BUS_CYCLE_NAME, image, CYCLE_TMPFS)
    write_small(daemon.mountpoint(BUS_CYCLE_NAME))
    await daemon.discard(BUS_CYCLE_NAME)
    return time.perf_counter() - t0


async def check_bus_cycle(daemon: Daemon, image: Path) -> None:
    """Once, untimed: the object path and the MountPoint property are what the timed
    cycles assume, and the write lands in the overlay."""
    path = await daemon.create(BUS_CYCLE_NAME, image, CYCLE_TMPFS)
    try:
        if path != overlay_path(BUS_CYCLE_NAME):
            raise BenchError(f"Create returned '{path}', not '{overlay_path(BUS_CYCLE_NAME)}'.")
        mnt = await daemon.property(path, "MountPoint")
        if mnt != str(daemon.mountpoint(BUS_CYCLE_NAME)):
            raise BenchError(f"MountPoint is '{mnt}', not the assumed "
                             f"'{daemon.mountpoint(BUS_CYCLE_NAME)}'.")
        write_small(Path(mnt))
        if await daemon.property(path, "UpperUsed") == 0:
            raise BenchError(f"the write into '{mnt}' did not reach the overlay's upper.")
    finally:
        await daemon.discard(BUS_CYCLE_NAME)


async def engine_commit(mgr: OverlayManager, image: Path, mnt: Path,
                        job: CommitJob) -> CommitTiming:
    await mgr.create(parse_spec({"name": COMMIT_NAME, "image": str(image),
                                 "mountpoint": str(mnt), "size": job.tmpfs_size}))
    job.fill(mnt)
    os.sync()
    t0 = time.perf_counter()
    stats = await mgr.commit(COMMIT_NAME)
    seconds = time.perf_counter() - t0
    job.check(mnt)  # now served by the image: the commit really landed
    await mgr.discard(COMMIT_NAME)
    return CommitTiming(seconds, stats.seconds)
