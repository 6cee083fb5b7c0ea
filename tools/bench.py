#!/usr/bin/env python3
"""Benchmark overlayd's engine and daemon against doing the same by hand with util-linux and cp.

Measured side by side in one run, on real loop devices, tmpfs and overlayfs (needs root):

1. Cycle: create an overlay of a small ext4 image, write one small file into the mount
   point, discard it. N times (--cycles, default 200) three ways, interleaved one cycle
   each (engine, bus, util-linux, engine, ...) after a few warm-up cycles:
   a. engine: one OverlayManager on this process's event loop;
   b. bus: ``overlayd --standalone --discard-on-exit`` as a child process (its own private
      dbus-daemon), driven by a dbus-next client on the same event loop: Manager.Create
      (name, {image, size}), the write, Manager.Discard (name, {}). The mount point is
      not read from the MountPoint property inside the timed cycle but computed (the
      default, RUNTIME_DIR/mnt/NAME), so the cycle is two calls, as the engine's is; it is
      checked once against the property before the warm-up. Both use the same image;
      the engine mounts at an explicit mount point, the bus at the default one;
   c. util-linux: the same steps as subprocesses (``losetup --find --show --read-only``,
      ``mount`` of the image, a tmpfs and the overlay, the write, ``umount`` x3,
      ``losetup -d``).
   Reported: median and p90 per cycle of each.
   Aims: engine / util-linux <= 0.25 and bus / util-linux <= 0.25 (medians); bus overhead,
   the bus median minus the engine median, <= 1.0 ms.
2. Scale, through the bus: a fresh ``overlayd --standalone``; its resident memory (VmRSS)
   right after start, with 0 overlays; then --overlays (default 200) overlays of one
   small image (16 MiB tmpfs each) created one after the other (s000, s001, ...); then
   Manager.ListOverlays (median of 50 calls) and ObjectManager.GetManagedObjects on the
   manager object (median of 20), each after 2 untimed calls; VmRSS again; then all
   discarded one after the other, and checked gone: no objects, no mounts, no loop
   devices. Reported: create and discard mean per overlay (each pays for the overlays
   alive at the time, so these grow with --overlays; every single time is in the JSON),
   the two medians, both RSS. No baseline and no aim.
3. Commit throughput, the new data in RAM on both sides:
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

Everything lives under a temporary root in /var/tmp (the runtime directories of the
engine and of the daemon too, never /run/overlayd; the daemon gets a configuration file
that does not exist, so /etc/overlayd plays no part). The daemon runs in its own session,
so a Ctrl-C reaches only this script, and with a parent-death signal (``setpriv
--pdeathsig TERM``), so it stops, discarding its overlays, even if this script is killed.
At the end, even after an error or Ctrl-C, the daemon is stopped with SIGTERM by its PID
and waited for (it discards its overlays and ends its dbus-daemon; SIGKILL only after two
minutes), the overlays left in either runtime directory are discarded, exactly the mounts
and loop devices the baseline made are undone, the root is removed, and ``losetup -a``,
/proc/self/mountinfo, the processes and the daemon's bus directory in /run are checked
for anything left.

    make bench
    .venv/bin/python tools/bench.py [--quick] [--json] [--cycles N] [--overlays N]
                                    [--big-mib N] [--small-files N] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

from overlayd.bus.names import BUS_NAME, MANAGER_IFACE, OVERLAY_IFACE, ROOT_PATH, overlay_path
from overlayd.config import DaemonConfig
from overlayd.errors import OverlaydError
from overlayd.host import loop
from overlayd.host.linux import LinuxHost
from overlayd.host.mounttable import read_mounts
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
BUS_CYCLE_NAME = "bench-bus-cycle"
COMMIT_NAME = "bench-commit"
BASELINE_SOURCE = "overlayd-bench"
PINNED_OPTIONS = "redirect_dir=off,index=off,metacopy=off,xino=off"
TOOLS = ("losetup", "mount", "umount", "mkfs.ext4", "truncate", "cp", "sync", "setpriv",
         "dbus-daemon")

OVERLAYD = Path(sys.executable).parent / "overlayd"
READY_PREFIX = "DBUS_SYSTEM_BUS_ADDRESS="
DAEMON_START_SECONDS = 30.0
DAEMON_STOP_SECONDS = 120.0  # it discards every overlay left before it exits
SCALE_IMAGE_MIB = 16
SCALE_TMPFS = 16 * MIB
SCALE_WARMUP_CALLS = 2
LIST_CALLS = 50
MANAGED_OBJECTS_CALLS = 20
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"

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
    overlays: int
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
    def busrun(self) -> Path:  # the daemon's runtime directory
        return self.root / "busrun"

    @property
    def daemon_config(self) -> Path:  # never created: the daemon runs on its defaults
        return self.root / "overlayd.conf"

    @property
    def daemon_log(self) -> Path:
        return self.root / "overlayd.log"

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
    return loop.attached()


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


# -- the daemon, and a client of it --------------------------------------------------------


def rss_mib(pid: int) -> float:
    """Resident memory of process PID (VmRSS), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"process {pid} has no VmRSS")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def processes_mentioning(needles: list[str]) -> list[str]:
    """Processes (not this one) whose command line holds one of NEEDLES: what is left of a
    daemon of ours (its runtime directory) or of its dbus-daemon (its bus directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        cmdline = " ".join(argv).strip()
        if any(n in cmdline for n in needles):
            found.append(f"process {entry}: {cmdline}")
    return found


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Daemon:
    """``overlayd --standalone --discard-on-exit`` as our child, and one dbus-next
    connection to its private bus. It runs in a session of its own, so that a Ctrl-C
    reaches only us and we stop it in order, and gets SIGTERM if we die."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.proc: subprocess.Popen[str] | None = None
        self.pid = 0
        self.address = ""
        self.bus_dir: Path | None = None  # /run/overlayd-bus-*, made and removed by it
        self.bus: MessageBus | None = None

    def start(self) -> None:
        argv = ["setpriv", "--pdeathsig", "TERM", str(OVERLAYD), "--standalone",
                "--discard-on-exit", "--runtime-dir", str(self.paths.busrun),
                "--config", str(self.paths.daemon_config)]
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}  # log to file
        with open(self.paths.daemon_log, "a") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=log, text=True, env=env,
                                         start_new_session=True)
        self.pid = self.proc.pid  # setpriv execs overlayd: the same process
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], DAEMON_START_SECONDS)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line.startswith(READY_PREFIX):
            why = "it exited" if self.proc.poll() is not None else \
                f"no address within {DAEMON_START_SECONDS:.0f} s"
            raise BenchError(f"overlayd did not start ({why}): {log_tail(self.paths.daemon_log)}")
        self.address = line.removeprefix(READY_PREFIX)
        socket = next((kv.removeprefix("path=") for kv in
                       self.address.removeprefix("unix:").split(",") if kv.startswith("path=")),
                      "")
        bus_dir = Path(socket).parent
        if bus_dir.parent == Path("/run") and bus_dir.name.startswith("overlayd-bus-"):
            self.bus_dir = bus_dir

    async def connect(self) -> None:
        self.bus = await MessageBus(bus_address=self.address).connect()

    def stop(self) -> list[str]:
        """SIGTERM by PID and wait: it discards its overlays and ends its dbus-daemon.
        Returns the problems met. Safe to call again."""
        problems: list[str] = []
        if self.bus is not None:
            self.bus.disconnect()
            self.bus = None
        proc, self.proc = self.proc, None
        if proc is None:
            return problems
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=DAEMON_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                problems.append(f"overlayd (pid {proc.pid}) did not stop within "
                                f"{DAEMON_STOP_SECONDS:.0f} s; killed it")
        if proc.returncode != 0:
            problems.append(f"overlayd exited with status {proc.returncode}: "
                            f"{log_tail(self.paths.daemon_log)}")
        if proc.stdout is not None:
            proc.stdout.close()
        if self.bus_dir is not None and self.bus_dir.exists():
            deadline = time.monotonic() + 5  # a killed daemon's dbus-daemon is going too
            while processes_mentioning([str(self.bus_dir)]) and time.monotonic() < deadline:
                time.sleep(0.05)
            problems.append(f"overlayd left its bus directory '{self.bus_dir}'; removed it")
            shutil.rmtree(self.bus_dir, ignore_errors=True)
        return problems

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def bus_daemon_rss_mib(self) -> float | None:
        """VmRSS of its dbus-daemon, if it can be found."""
        for pid in children(self.pid):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "dbus-daemon":
                        return rss_mib(pid)
            except OSError:
                continue
        return None

    def mountpoint(self, name: str) -> Path:
        """The default mount point (the daemon has no mount_root configured)."""
        return self.paths.busrun / "mnt" / name

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None) -> list[Any]:
        assert self.bus is not None
        reply = await self.bus.call(Message(destination=BUS_NAME, path=path,
                                            interface=interface, member=member,
                                            signature=signature, body=body or []))
        if reply.message_type is MessageType.ERROR:
            detail = reply.body[0] if reply.body else ""
            raise BenchError(f"{member} over the bus failed: {reply.error_name}: {detail}")
        body_out: list[Any] = reply.body
        return body_out

    async def create(self, name: str, image: Path, size: int) -> str:
        spec = {"image": Variant("s", str(image)), "size": Variant("t", size)}
        path: str = (await self.call(ROOT_PATH, MANAGER_IFACE, "Create", "sa{sv}",
                                     [name, spec]))[0]
        return path

    async def discard(self, name: str) -> None:
        await self.call(ROOT_PATH, MANAGER_IFACE, "Discard", "sa{sv}", [name, {}])

    async def list_overlays(self) -> list[tuple[str, str]]:
        return [(n, p) for n, p in (await self.call(ROOT_PATH, MANAGER_IFACE, "ListOverlays"))[0]]

    async def managed_objects(self) -> dict[str, Any]:
        objects: dict[str, Any] = (await self.call(ROOT_PATH, OBJECT_MANAGER_IFACE,
                                                   "GetManagedObjects"))[0]
        return objects

    async def property(self, path: str, name: str) -> Any:
        return (await self.call(path, PROPERTIES_IFACE, "Get", "ss",
                                [OVERLAY_IFACE, name]))[0].value


def wait_released(runtime_dir: Path, image: Path, seconds: float = 5.0) -> list[str]:
    """Mounts still under RUNTIME_DIR and loop devices still backed by IMAGE after SECONDS
    (autoclear detaches a loop device a moment after its last unmount)."""
    deadline = time.monotonic() + seconds
    while True:
        found = [f"mount {m.target}" for m in read_mounts() if is_within(m.target, runtime_dir)]
        found += [f"loop device {d}" for d, b in attached_loops().items() if b == str(image)]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# -- 1. cycles ----------------------------------------------------------------------------


async def engine_cycle(mgr: OverlayManager, image: Path, mnt: Path) -> float:
    t0 = time.perf_counter()
    spec = parse_spec({"name": CYCLE_NAME, "image": str(image), "mountpoint": str(mnt),
                       "size": CYCLE_TMPFS})
    await mgr.create(spec)
    write_small(mnt)
    await mgr.discard(CYCLE_NAME)
    return time.perf_counter() - t0


async def bus_cycle(daemon: Daemon, image: Path) -> float:
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
    engine: float  # overlayd's figure: the engine in-process, or the daemon over the bus
    baseline: float | None  # util-linux or cp; None where nothing compares
    # (">=" or "<=", the aimed engine / baseline ratio; without a baseline, the aimed figure)
    aim: tuple[str, float] | None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None:
            return None
        return self.engine / self.baseline if self.baseline else float("inf")

    @property
    def met(self) -> bool | None:
        if self.aim is None:
            return None
        op, value = self.aim
        x = self.engine if self.ratio is None else self.ratio
        return x <= value if op == "<=" else x >= value

    @property
    def aim_text(self) -> str | None:
        if self.aim is None:
            return None
        text = f"{self.aim[0]} {self.aim[1]}"
        return text if self.baseline is not None else f"{text} {self.unit}"

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "unit": self.unit, "engine": self.engine,
                "baseline": self.baseline, "ratio": self.ratio, "aim": self.aim_text,
                "met": self.met}


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def cycle_rows(engine: list[float], bus: list[float], util: list[float]) -> list[Row]:
    ms = 1000.0
    e, b, u = (statistics.median(x) * ms for x in (engine, bus, util))
    return [
        Row("cycle median", "ms", e, u, ("<=", 0.25)),
        Row("cycle p90", "ms", p90(engine) * ms, p90(util) * ms, None),
        Row("cycle median, bus", "ms", b, u, ("<=", 0.25)),
        Row("cycle p90, bus", "ms", p90(bus) * ms, p90(util) * ms, None),
        Row("bus overhead (bus - engine, medians)", "ms", b - e, None, ("<=", 1.0)),
    ]


def scale_rows(n: int, scale: dict[str, Any]) -> list[Row]:
    ms = 1000.0
    return [
        Row(f"{n} overlays: create, mean", "ms",
            statistics.mean(scale["create_seconds"]) * ms, None, None),
        Row(f"{n} overlays: ListOverlays median", "ms",
            statistics.median(scale["list_overlays_seconds"]) * ms, None, None),
        Row(f"{n} overlays: GetManagedObjects median", "ms",
            statistics.median(scale["managed_objects_seconds"]) * ms, None, None),
        Row(f"{n} overlays: discard, mean", "ms",
            statistics.mean(scale["discard_seconds"]) * ms, None, None),
        Row("daemon RSS, 0 overlays", "MiB", scale["rss_mib"]["0"], None, None),
        Row(f"daemon RSS, {n} overlays", "MiB", scale["rss_mib"][str(n)], None, None),
    ]


# -- the run ------------------------------------------------------------------------------


class Bench:
    def __init__(self, settings: Settings, paths: Paths) -> None:
        self.settings = settings
        self.paths = paths
        self.tracker = Tracker()
        self.config = DaemonConfig(runtime_dir=paths.run, default_size=CYCLE_TMPFS)
        self.bus_config = DaemonConfig(runtime_dir=paths.busrun)  # the daemon's, for cleanup
        self.daemons: list[Daemon] = []
        self.problems: list[str] = []  # met on the way, not fatal: warnings at the end
        self.raw: dict[str, Any] = {}

    def image(self, name: str, size_mib: int) -> Path:
        return make_image(self.paths.images / f"{name}.img", size_mib)

    async def run(self) -> list[Row]:
        mgr = OverlayManager(self.config, LinuxHost())
        await mgr.start()
        rows = await self.cycles(mgr)
        rows += await self.scale()
        rows.append(await self.big(mgr))
        rows.append(await self.small(mgr))
        return rows

    async def start_daemon(self) -> Daemon:
        daemon = Daemon(self.paths)
        self.daemons.append(daemon)  # before it starts: cleanup stops even a half-started one
        daemon.start()
        await daemon.connect()
        return daemon

    def stop_daemons(self) -> None:
        for daemon in self.daemons:
            self.problems += daemon.stop()

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

    async def scale(self) -> list[Row]:
        n = self.settings.overlays
        say(f"scale: {n} overlays through a fresh daemon; ListOverlays x {LIST_CALLS}, "
            f"GetManagedObjects x {MANAGED_OBJECTS_CALLS}")
        image = self.image("scale", SCALE_IMAGE_MIB)
        daemon = await self.start_daemon()
        try:
            scale = await self.scale_with(daemon, image)
        finally:
            self.stop_daemons()
        self.raw["scale"] = scale
        return scale_rows(n, scale)

    async def scale_with(self, daemon: Daemon, image: Path) -> dict[str, Any]:
        n = self.settings.overlays
        rss = {"0": daemon.rss_mib()}
        bus_rss = {"0": daemon.bus_daemon_rss_mib()}
        if await daemon.list_overlays():
            raise BenchError("the fresh daemon already has overlays.")
        names = [f"s{i:03d}" for i in range(n)]
        create: list[float] = []
        for name in names:
            t0 = time.perf_counter()
            await daemon.create(name, image, SCALE_TMPFS)
            create.append(time.perf_counter() - t0)
        listed = await daemon.list_overlays()
        if sorted(listed) != [(name, overlay_path(name)) for name in names]:
            raise BenchError(f"ListOverlays lists {len(listed)} overlays, not the {n} created.")
        objects = await daemon.managed_objects()
        if sorted(objects) != sorted(overlay_path(name) for name in names):
            raise BenchError(f"GetManagedObjects has {len(objects)} objects, not {n}.")
        list_s = await timed_calls(daemon.list_overlays, LIST_CALLS)
        objects_s = await timed_calls(daemon.managed_objects, MANAGED_OBJECTS_CALLS)
        rss[str(n)] = daemon.rss_mib()
        bus_rss[str(n)] = daemon.bus_daemon_rss_mib()
        discard: list[float] = []
        for name in names:
            t0 = time.perf_counter()
            await daemon.discard(name)
            discard.append(time.perf_counter() - t0)
        if await daemon.list_overlays() or await daemon.managed_objects():
            raise BenchError(f"overlays are still listed after discarding all {n}.")
        left = wait_released(self.paths.busrun, image)
        if left:
            raise BenchError(f"left after discarding all {n} overlays: {', '.join(left[:5])}")
        rss["after_discard"] = daemon.rss_mib()
        bus_rss["after_discard"] = daemon.bus_daemon_rss_mib()
        return {"overlays": n, "create_seconds": create, "discard_seconds": discard,
                "list_overlays_seconds": list_s, "managed_objects_seconds": objects_s,
                "rss_mib": rss, "dbus_daemon_rss_mib": bus_rss}

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


async def timed_calls(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    """Seconds of COUNT calls, after SCALE_WARMUP_CALLS untimed ones."""
    out: list[float] = []
    for i in range(SCALE_WARMUP_CALLS + count):
        t0 = time.perf_counter()
        await call()
        if i >= SCALE_WARMUP_CALLS:
            out.append(time.perf_counter() - t0)
    return out


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


def leftovers(root: Path, bus_dirs: list[Path]) -> list[str]:
    """Mounts under ROOT, loop devices backed by files under it, processes naming ROOT or
    one of BUS_DIRS (a daemon of ours, its dbus-daemon), and BUS_DIRS still there."""
    found = [f"mount {m.target} ({m.fstype} from {m.source})" for m in read_mounts()
             if is_within(m.target, root)]
    found += [f"loop device {line}" for line in sh("losetup", "-a").splitlines()
              if str(root) in line]
    found += processes_mentioning([str(root), *(str(d) for d in bus_dirs)])
    found += [f"directory {d}" for d in bus_dirs if d.exists()]
    return found


def wait_for_leftovers(root: Path, bus_dirs: list[Path], seconds: float = 5.0) -> list[str]:
    """Leftovers that are still there after SECONDS (autoclear and udev take a moment)."""
    deadline = time.monotonic() + seconds
    while True:
        found = leftovers(root, bus_dirs)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def cleanup(bench: Bench) -> list[str]:
    """Undo everything; the warnings to print (empty when all is gone)."""
    bench.stop_daemons()  # first: a running daemon owns the overlays of its runtime directory
    warnings = list(bench.problems)
    for config, whose in ((bench.config, "engine's"), (bench.bus_config, "daemon's")):
        if config is bench.bus_config and any(d.running for d in bench.daemons):
            warnings.append("a daemon is still running; left its overlays alone")
            continue
        try:
            warnings += asyncio.run(discard_leftovers(config))
        except Exception as e:  # keep going: the baseline's mounts must still be undone
            warnings.append(f"cleaning up the {whose} overlays failed: {e}")
    warnings += bench.tracker.undo()
    root = bench.paths.root
    bus_dirs = [d.bus_dir for d in bench.daemons if d.bus_dir is not None]
    left = wait_for_leftovers(root, bus_dirs)
    if any(item.startswith("mount ") for item in left):
        warnings.append(f"kept '{root}' because something is still mounted in it")
    else:
        shutil.rmtree(root, ignore_errors=True)
        left = wait_for_leftovers(root, bus_dirs)
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


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def table(rows: list[Row], settings: Settings, raw: dict[str, Any]) -> str:
    head = ("measure", "unit", "overlayd", "baseline", "ratio", "aim", "")
    body = [(r.label, r.unit, fmt(r.engine), fmt(r.baseline),
             "" if r.ratio is None else f"{r.ratio:.3f}", r.aim_text or "",
             {True: "ok", False: "MISSED", None: ""}[r.met]) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    right = {2, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [f"overlayd benchmark on Linux {os.uname().release}: {settings.cycles} cycles; "
           f"{settings.overlays} overlays; commits of a {settings.big_mib} MiB file and of "
           f"{settings.small_files} small files, best of {settings.repeat}",
           line(head), line(tuple("-" * w for w in widths)), *(line(b) for b in body),
           "overlayd: the engine in-process (OverlayManager); in the rows saying bus or "
           "overlays, the daemon (overlayd --standalone) called over D-Bus by dbus-next",
           "baseline: util-linux commands as subprocesses (cycle); cp -a + sync into the "
           "image mounted read-write (commits)",
           "ratio: overlayd / baseline; for ms lower is better, for rates higher is better",
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
    p.add_argument("--overlays", type=int, default=200,
                   help="overlays the daemon holds at once in the scale measurement")
    p.add_argument("--big-mib", type=int, default=512, help="size of the big file, MiB")
    p.add_argument("--small-files", type=int, default=10_000, help="number of 4 KiB files")
    p.add_argument("--repeat", type=int, default=5,
                   help="samples of each commit measurement (the best is reported)")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: 30 cycles, 50 overlays, 64 MiB, 1000 files, "
                        "3 samples")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    if a.quick:
        a.cycles, a.overlays, a.big_mib, a.small_files, a.repeat = 30, 50, 64, 1000, 3
    if min(a.cycles, a.overlays, a.big_mib, a.small_files, a.repeat) < 1:
        p.error("--cycles, --overlays, --big-mib, --small-files and --repeat must be at "
                "least 1")
    if a.overlays > 1000:
        p.error("--overlays must be at most 1000 (names s000 to s999)")
    return Settings(a.cycles, a.overlays, a.big_mib, a.small_files, a.repeat), a.json


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (loop devices, mounts).")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing commands: {', '.join(missing)}.")
    if not os.path.exists("/dev/loop-control"):
        raise BenchError("needs /dev/loop-control.")
    if not os.access(OVERLAYD, os.X_OK):
        raise BenchError(f"needs the daemon at '{OVERLAYD}' (make setup).")


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
