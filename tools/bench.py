#!/usr/bin/env python3
"""Benchmark overlayd's engine against doing the same by hand with util-linux and cp.

Measured side by side in one run, on real loop devices, tmpfs and overlayfs (needs root):

1. Cycle: create an overlay of a small ext4 image, write one small file into the mount
   point, discard it. N times (--cycles, default 200) through one OverlayManager on one
   event loop, versus the same steps as util-linux subprocesses (``losetup --find --show
   --read-only``, ``mount`` of the image, a tmpfs and the overlay, the write, ``umount``
   x3, ``losetup -d``). The two are interleaved, one cycle each, after a few warm-up
   cycles. Reported: median and p90 per cycle.
   Aim: engine / util-linux <= 0.25 (median).
2. Commit throughput, the new data in RAM on both sides:
   a. one big file (--big-mib, default 512 MiB; random, not sparse) written into an
      overlay, then Commit timed (it includes flushing the image): MiB/s; versus the same
      file written to a tmpfs, then ``cp -a`` into the image mounted read-write
      (``mount -o loop``) and ``sync``, timed together. Aim: engine / cp >= 0.8.
   b. many small files (--small-files, default 10,000 files of 4 KiB, 100 per directory):
      files/s for Commit versus ``cp -a`` of the same tree + ``sync``. Aim: >= 1.0.

Each commit measurement is sampled --repeat times (default 5) per side, alternating which
side goes first, and the best sample of each side is reported (all samples, and the
medians, are in the JSON). The noise here only ever adds time, and a lot of it: on a VM
with free page reporting (virtio-balloon), RAM freed a few seconds earlier has gone back
to the host, and the copy that happens to write into it pays a host page fault per page,
up to 5 times slower; the disk adds its own. The best of a few samples is what the code
can do; a single sample or a median of three is a coin toss. Every sample gets its own
fresh ext4 image (made with lazy inode-table and journal init off, so no background zeroing
runs during a timed phase), and ``sync`` runs before every timed phase so earlier dirty
data does not count. Page caches are not dropped.

Everything lives under a temporary root in /var/tmp (the engine's runtime directory too,
never /run/overlayd). At the end, even after an error or Ctrl-C, the overlays are
discarded, exactly the mounts and loop devices the baseline made are undone, the root is
removed, and ``losetup -a`` and /proc/self/mountinfo are checked for anything left.

    make bench
    .venv/bin/python tools/bench.py [--quick] [--json] [--cycles N] [--big-mib N]
                                    [--small-files N] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from overlayd.config import DaemonConfig
from overlayd.errors import OverlaydError
from overlayd.host.linux import LinuxHost
from overlayd.host.mountinfo import read_mounts
from overlayd.layout import is_within
from overlayd.manager import OverlayManager
from overlayd.model import parse_spec

MIB = 1 << 20
WARMUP_CYCLES = 3
CYCLE_TMPFS = 64 * MIB
SMALL_SIZE = 4096
FILES_PER_DIR = 100
BIG_NAME = "big.bin"
TREE_NAME = "tree"
CYCLE_NAME = "bench-cycle"
COMMIT_NAME = "bench-commit"
BASELINE_SOURCE = "overlayd-bench"
PINNED_OPTIONS = "redirect_dir=off,index=off,metacopy=off,xino=off"
TOOLS = ("losetup", "mount", "umount", "mkfs.ext4", "truncate", "cp", "sync")

Fill = Callable[[Path], None]


class BenchError(Exception):
    """A step of the benchmark failed; the message says which."""


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str) -> str:
    """Run CMD; its stdout, or BenchError with its stderr."""
    r = subprocess.run(cmd, text=True, capture_output=True, check=False)
    if r.returncode != 0:
        raise BenchError(f"'{' '.join(cmd)}' failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


# -- settings and places ------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    cycles: int
    big_mib: int
    small_files: int
    repeat: int


@dataclass(frozen=True)
class Paths:
    """The layout of the temporary root."""

    root: Path

    @property
    def run(self) -> Path:  # the engine's runtime directory
        return self.root / "run"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def engine_mnt(self) -> Path:  # the engine's merged view (an explicit mount point)
        return self.root / "engine" / "mnt"

    @property
    def util_lower(self) -> Path:
        return self.root / "util" / "lower"

    @property
    def util_rw(self) -> Path:
        return self.root / "util" / "rw"

    @property
    def util_mnt(self) -> Path:
        return self.root / "util" / "mnt"

    @property
    def cp_src(self) -> Path:  # a tmpfs holding the data cp copies
        return self.root / "cp" / "src"

    @property
    def cp_dst(self) -> Path:  # the image mounted read-write
        return self.root / "cp" / "dst"

    def make(self) -> None:
        for d in (self.images, self.engine_mnt, self.util_lower, self.util_rw, self.util_mnt,
                  self.cp_src, self.cp_dst):
            d.mkdir(parents=True)


def make_image(path: Path, size_mib: int) -> Path:
    """A sparse ext4 image; inode tables and journal zeroed now, not behind our back later."""
    sh("truncate", "-s", f"{size_mib}M", str(path))
    sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(path))
    return path


def image_mib(settings: Settings) -> int:
    """Room for the big file with slack, and inodes for the small files (one per 16 KiB)."""
    return max(1024, settings.big_mib * 3 // 2 + 128,
               settings.small_files * 32 * 1024 // MIB + 128)


# -- the data -------------------------------------------------------------------------------


def write_small(directory: Path) -> None:
    with open(directory / "hello.txt", "wb") as f:
        f.write(b"hello from overlayd's benchmark\n")


def write_big(directory: Path, mib: int) -> None:
    """MIB MiB of random data, every MiB different; nothing sparse, nothing compressible."""
    block = bytearray(os.urandom(MIB))
    with open(directory / BIG_NAME, "wb") as f:
        for i in range(mib):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)


def write_tree(directory: Path, count: int) -> None:
    """COUNT files of 4 KiB of random data, FILES_PER_DIR to a directory."""
    pool = os.urandom(2 * SMALL_SIZE)
    tree = directory / TREE_NAME
    tree.mkdir()
    for i in range(count):
        sub = tree / f"d{i // FILES_PER_DIR:04d}"
        if i % FILES_PER_DIR == 0:
            sub.mkdir()
        offset = i % SMALL_SIZE
        (sub / f"f{i % FILES_PER_DIR:03d}").write_bytes(pool[offset:offset + SMALL_SIZE])


def check_big(directory: Path, mib: int) -> None:
    size = (directory / BIG_NAME).stat().st_size
    if size != mib * MIB:
        raise BenchError(f"'{directory / BIG_NAME}' has {size} bytes, not {mib * MIB}.")


def check_tree(directory: Path, count: int) -> None:
    found = sum(len(files) for _, _, files in os.walk(directory / TREE_NAME))
    if found != count:
        raise BenchError(f"'{directory / TREE_NAME}' holds {found} files, not {count}.")


# -- what the baseline made, and undoing exactly that ----------------------------------------


def mounted_at(target: Path | str) -> list[str]:
    """Sources of the mounts at TARGET, bottom first."""
    return [m.source for m in read_mounts() if m.target == str(target)]


def attached_loops() -> dict[str, str]:
    """Loop device -> backing file, for every attached loop device."""
    out: dict[str, str] = {}
    for name in os.listdir("/sys/block"):
        if name.startswith("loop"):
            try:
                with open(f"/sys/block/{name}/loop/backing_file") as f:
                    out[f"/dev/{name}"] = f.read().strip()
            except OSError:
                continue
    return out


class Tracker:
    """The mount points and images the baseline used, so that exactly its mounts and loop
    devices are undone, even after an interruption between a command and its record."""

    def __init__(self) -> None:
        self.targets: dict[str, None] = {}  # mount points, in the order of first use
        self.images: set[str] = set()  # image files the baseline put on loop devices

    def mount(self, *args: str, target: Path) -> None:
        self.targets[str(target)] = None  # recorded first: mount(8) may succeed, then we die
        sh("mount", *args, str(target))

    def umount(self, target: Path) -> None:
        sh("umount", str(target))

    def attach(self, image: Path) -> str:
        self.images.add(str(image))
        return sh("losetup", "--find", "--show", "--read-only", str(image)).strip()

    def detach(self, device: str) -> None:
        sh("losetup", "-d", device)

    def mount_image_rw(self, image: Path, target: Path) -> str:
        """Mount IMAGE read-write with ``mount -o loop``; returns the loop device it got."""
        self.images.add(str(image))
        self.mount("-o", "loop", str(image), target=target)
        return mounted_at(target)[-1]

    def release(self, device: str) -> None:
        """Detach DEVICE if it still holds one of our images (autoclear usually did it)."""
        if attached_loops().get(device) in self.images:
            with contextlib.suppress(BenchError):  # autoclear may win the race
                self.detach(device)

    def undo(self) -> list[str]:
        """Unmount what is still mounted at our mount points, newest first, and detach the
        loop devices still holding our images. Returns the problems met."""
        problems: list[str] = []
        for target in reversed(self.targets):
            for _ in range(4):  # a mount point we used more than once may hold a stack
                if not mounted_at(target):
                    break
                try:
                    self.umount(Path(target))
                except BenchError as e:
                    problems.append(str(e))
                    break
        for device, backing in attached_loops().items():
            if backing in self.images:
                try:
                    self.detach(device)
                except BenchError as e:
                    problems.append(str(e))
        return problems


# -- 1. cycles ----------------------------------------------------------------------------


async def engine_cycle(mgr: OverlayManager, image: Path, mnt: Path) -> float:
    t0 = time.perf_counter()
    spec = parse_spec({"name": CYCLE_NAME, "image": str(image), "mountpoint": str(mnt),
                       "size": CYCLE_TMPFS})
    await mgr.create(spec)
    write_small(mnt)
    await mgr.discard(CYCLE_NAME)
    return time.perf_counter() - t0


def util_linux_cycle(tracker: Tracker, image: Path, paths: Paths) -> float:
    lower, rw, mnt = paths.util_lower, paths.util_rw, paths.util_mnt
    t0 = time.perf_counter()
    device = tracker.attach(image)
    tracker.mount("-o", "ro", device, target=lower)
    tracker.mount("-t", "tmpfs", "-o", f"size={CYCLE_TMPFS // MIB}M", BASELINE_SOURCE,
                  target=rw)
    (rw / "upper").mkdir()
    (rw / "work").mkdir()
    options = f"lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work,{PINNED_OPTIONS}"
    tracker.mount("-t", "overlay", BASELINE_SOURCE, "-o", options, target=mnt)
    write_small(mnt)
    for target in (mnt, rw, lower):
        tracker.umount(target)
    tracker.detach(device)
    return time.perf_counter() - t0


# -- 2. commits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CommitJob:
    """What one commit measurement writes, and how it checks the result."""

    label: str
    name: str  # the file or directory written at the top of the overlay / the source
    data_bytes: int
    fill: Fill
    check: Fill

    @property
    def tmpfs_size(self) -> int:
        return self.data_bytes + 64 * MIB


@dataclass
class CommitTiming:
    seconds: float  # the whole timed phase
    apply_seconds: float | None = None  # the engine's own figure for applying the upper


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


def cp_commit(tracker: Tracker, image: Path, paths: Paths, job: CommitJob) -> CommitTiming:
    src, dst = paths.cp_src, paths.cp_dst
    tracker.mount("-t", "tmpfs", "-o", f"size={job.tmpfs_size}", f"{BASELINE_SOURCE}-src",
                  target=src)
    job.fill(src)
    device = tracker.mount_image_rw(image, dst)
    os.sync()
    t0 = time.perf_counter()
    sh("cp", "-a", str(src / job.name), str(dst / job.name))
    sh("sync")
    seconds = time.perf_counter() - t0
    job.check(dst)
    tracker.umount(dst)
    tracker.release(device)
    tracker.umount(src)
    return CommitTiming(seconds)


# -- results ------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    unit: str
    engine: float
    baseline: float
    aim: tuple[str, float] | None  # (">=" or "<=", the aimed engine / baseline ratio)

    @property
    def ratio(self) -> float:
        return self.engine / self.baseline if self.baseline else float("inf")

    @property
    def met(self) -> bool | None:
        if self.aim is None:
            return None
        op, value = self.aim
        return self.ratio <= value if op == "<=" else self.ratio >= value

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "unit": self.unit, "engine": self.engine,
                "baseline": self.baseline, "ratio": self.ratio,
                "aim": None if self.aim is None else f"{self.aim[0]} {self.aim[1]}",
                "met": self.met}


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def cycle_rows(engine: list[float], util: list[float]) -> list[Row]:
    ms = 1000.0
    return [
        Row("cycle median", "ms", statistics.median(engine) * ms,
            statistics.median(util) * ms, ("<=", 0.25)),
        Row("cycle p90", "ms", p90(engine) * ms, p90(util) * ms, None),
    ]


# -- the run ------------------------------------------------------------------------------


class Bench:
    def __init__(self, settings: Settings, paths: Paths) -> None:
        self.settings = settings
        self.paths = paths
        self.tracker = Tracker()
        self.config = DaemonConfig(runtime_dir=paths.run, default_size=CYCLE_TMPFS)
        self.raw: dict[str, Any] = {}

    def image(self, name: str, size_mib: int) -> Path:
        return make_image(self.paths.images / f"{name}.img", size_mib)

    async def run(self) -> list[Row]:
        mgr = OverlayManager(self.config, LinuxHost())
        await mgr.start()
        rows = await self.cycles(mgr)
        rows.append(await self.big(mgr))
        rows.append(await self.small(mgr))
        return rows

    async def cycles(self, mgr: OverlayManager) -> list[Row]:
        n = self.settings.cycles
        say(f"cycles: {n} each (after {WARMUP_CYCLES} warm-up), engine and util-linux "
            "interleaved")
        engine_img, util_img = self.image("cycle-engine", 64), self.image("cycle-util", 64)
        engine: list[float] = []
        util: list[float] = []
        os.sync()
        for i in range(WARMUP_CYCLES + n):
            e = await engine_cycle(mgr, engine_img, self.paths.engine_mnt)
            u = util_linux_cycle(self.tracker, util_img, self.paths)
            if i >= WARMUP_CYCLES:
                engine.append(e)
                util.append(u)
        self.raw["cycle_seconds"] = {"engine": engine, "util_linux": util}
        return cycle_rows(engine, util)

    async def big(self, mgr: OverlayManager) -> Row:
        mib = self.settings.big_mib
        say(f"commit of one {mib} MiB file, {self.settings.repeat} x engine and "
            "cp -a + sync, alternating")

        def fill(d: Path) -> None:
            write_big(d, mib)

        def check(d: Path) -> None:
            check_big(d, mib)

        job = CommitJob("big", BIG_NAME, mib * MIB, fill, check)
        engine, cp = await self.commit_pairs(mgr, job)
        return Row(f"commit 1 x {mib} MiB", "MiB/s", mib / engine, mib / cp, (">=", 0.8))

    async def small(self, mgr: OverlayManager) -> Row:
        count = self.settings.small_files
        say(f"commit of {count} files of 4 KiB, {self.settings.repeat} x engine and "
            "cp -a + sync, alternating")

        def fill(d: Path) -> None:
            write_tree(d, count)

        def check(d: Path) -> None:
            check_tree(d, count)

        job = CommitJob("small", TREE_NAME, count * SMALL_SIZE, fill, check)
        engine, cp = await self.commit_pairs(mgr, job)
        return Row(f"commit {count} x 4 KiB", "files/s", count / engine, count / cp,
                   (">=", 1.0))

    async def commit_pairs(self, mgr: OverlayManager, job: CommitJob) -> tuple[float, float]:
        """Best seconds of the engine's commit and of cp + sync, each on a fresh image
        per sample, the order alternating so that warm-up effects hit both sides."""
        engine: list[CommitTiming] = []
        cp: list[CommitTiming] = []
        size_mib = image_mib(self.settings)
        for i in range(self.settings.repeat):
            for side in ("engine", "cp") if i % 2 == 0 else ("cp", "engine"):
                image = self.image(f"{job.label}-{side}-{i}", size_mib)
                if side == "engine":
                    engine.append(await engine_commit(mgr, image, self.paths.engine_mnt, job))
                else:
                    cp.append(cp_commit(self.tracker, image, self.paths, job))
                image.unlink()  # sparse, but up to the data written: keep the disk free
        engine_s, cp_s = [t.seconds for t in engine], [t.seconds for t in cp]
        self.raw[job.label] = {
            "engine_seconds": engine_s,
            "engine_apply_seconds": [t.apply_seconds for t in engine],
            "cp_seconds": cp_s,
            "median_ratio": statistics.median(cp_s) / statistics.median(engine_s),
        }
        return min(engine_s), min(cp_s)


def measure(bench: Bench) -> list[Row]:
    """Run the measurements on one event loop. If interrupted, cancel them and wait for a
    create or commit still running in a worker thread, so cleanup sees its result."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(bench.run())
    try:
        return loop.run_until_complete(task)
    finally:
        ignore_signals()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


# -- cleanup ------------------------------------------------------------------------------


async def discard_leftovers(config: DaemonConfig) -> list[str]:
    """Discard every overlay still under our runtime directory: a fresh manager's recovery
    adopts the live ones (and removes half-made ones), then each is discarded with force."""
    if not config.runtime_dir.exists():
        return []
    mgr = OverlayManager(config, LinuxHost())
    problems = list((await mgr.start()).problems)
    for rec in mgr.list():
        try:
            await mgr.discard(rec.name, force=True)
        except OverlaydError as e:
            problems.append(f"discard '{rec.name}': {e}")
    return problems


def leftovers(root: Path) -> list[str]:
    """Mounts under ROOT and loop devices backed by files under it."""
    found = [f"mount {m.target} ({m.fstype} from {m.source})" for m in read_mounts()
             if is_within(m.target, root)]
    found += [f"loop device {line}" for line in sh("losetup", "-a").splitlines()
              if str(root) in line]
    return found


def wait_for_leftovers(root: Path, seconds: float = 5.0) -> list[str]:
    """Leftovers that are still there after SECONDS (autoclear and udev take a moment)."""
    deadline = time.monotonic() + seconds
    while True:
        found = leftovers(root)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def cleanup(bench: Bench) -> list[str]:
    """Undo everything; the warnings to print (empty when all is gone)."""
    warnings: list[str] = []
    try:
        warnings += asyncio.run(discard_leftovers(bench.config))
    except Exception as e:  # keep going: the baseline's mounts must still be undone
        warnings.append(f"cleaning up the engine's overlays failed: {e}")
    warnings += bench.tracker.undo()
    root = bench.paths.root
    left = wait_for_leftovers(root)
    if any(item.startswith("mount ") for item in left):
        warnings.append(f"kept '{root}' because something is still mounted in it")
    else:
        shutil.rmtree(root, ignore_errors=True)
        left = wait_for_leftovers(root)
        if root.exists():
            warnings.append(f"could not remove '{root}' entirely")
    warnings += [f"left behind: {item}" for item in left]
    return warnings


def ignore_signals() -> None:
    """From now on only cleanup runs; a second Ctrl-C must not cut it short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# -- output -------------------------------------------------------------------------------


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def table(rows: list[Row], settings: Settings, raw: dict[str, Any]) -> str:
    head = ("measure", "unit", "engine", "baseline", "ratio", "aim", "")
    body = [(r.label, r.unit, fmt(r.engine), fmt(r.baseline), f"{r.ratio:.3f}",
             "" if r.aim is None else f"{r.aim[0]} {r.aim[1]}",
             {True: "ok", False: "MISSED", None: ""}[r.met]) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    right = {2, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [f"overlayd benchmark on Linux {os.uname().release}: {settings.cycles} cycles; "
           f"commits of a {settings.big_mib} MiB file and of {settings.small_files} small "
           f"files, best of {settings.repeat}",
           line(head), line(tuple("-" * w for w in widths)), *(line(b) for b in body),
           "baseline: util-linux commands as subprocesses (cycle); cp -a + sync into the "
           "image mounted read-write (commits)",
           "ratio: engine / baseline; for ms lower is better, for rates higher is better",
           "commits, ratio of the medians instead of the best samples: "
           + ", ".join(f"{k} {raw[k]['median_ratio']:.3f}" for k in ("big", "small")
                       if k in raw)]
    return "\n".join(out)


def report(rows: list[Row], bench: Bench, warnings: list[str], as_json: bool) -> None:
    if as_json:
        doc = {"kernel": os.uname().release, "settings": vars(bench.settings),
               "results": [r.as_dict() for r in rows], "raw": bench.raw, "warnings": warnings}
        print(json.dumps(doc, indent=2))
    else:
        print(table(rows, bench.settings, bench.raw))


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[Settings, bool]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cycles", type=int, default=200, help="create/write/discard cycles")
    p.add_argument("--big-mib", type=int, default=512, help="size of the big file, MiB")
    p.add_argument("--small-files", type=int, default=10_000, help="number of 4 KiB files")
    p.add_argument("--repeat", type=int, default=5,
                   help="samples of each commit measurement (the best is reported)")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: 30 cycles, 64 MiB, 1000 files, 3 samples")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    if a.quick:
        a.cycles, a.big_mib, a.small_files, a.repeat = 30, 64, 1000, 3
    if min(a.cycles, a.big_mib, a.small_files, a.repeat) < 1:
        p.error("--cycles, --big-mib, --small-files and --repeat must be at least 1")
    return Settings(a.cycles, a.big_mib, a.small_files, a.repeat), a.json


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (loop devices, mounts).")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing commands: {', '.join(missing)}.")
    if not os.path.exists("/dev/loop-control"):
        raise BenchError("needs /dev/loop-control.")


def main(argv: list[str] | None = None) -> int:
    settings, as_json = parse_args(argv)
    try:
        preflight()
    except BenchError as e:
        say(str(e))
        return 2
    root = Path(tempfile.mkdtemp(prefix="overlayd-bench-", dir="/var/tmp")).resolve()
    paths = Paths(root)
    bench = Bench(settings, paths)
    signal.signal(signal.SIGTERM, interrupt)
    rows: list[Row] = []
    error: str | None = None
    try:
        paths.make()
        rows = measure(bench)
    except (BenchError, OverlaydError, OSError) as e:
        error = str(e)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        ignore_signals()
        warnings = cleanup(bench)
    for w in warnings:
        say(f"WARNING: {w}")
    if error is not None:
        say(f"failed: {error}")
        return 1
    report(rows, bench, warnings, as_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
