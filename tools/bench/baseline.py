"""The baseline: the same steps by hand, with util-linux commands and cp -a + sync.

Tracker records every mount point and image it uses before the command runs, so that
exactly its mounts and loop devices are undone, even after an interruption.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from overlayd.host import loop
from overlayd.host.mounttable import read_mounts
from overlayd.overlayfs import PINNED  # the one place the bench learns overlayd's pinned options
from tools.bench.settings import BASELINE_SOURCE, CYCLE_TMPFS, MIB, BenchError, Paths, sh
from tools.bench.workload import CommitJob, CommitTiming, write_small

PINNED_OPTIONS = ",".join(f"{key}={value}" for key, value in PINNED)


def mounted_at(target: Path | str) -> list[str]:
    """Sources of the mounts at TARGET, bottom first."""
    return [m.source for m in read_mounts() if m.target == str(target)]


def attached_loops() -> dict[str, str]:
    """Loop device -> backing file, for every attached loop device."""
    return loop.attached()


class Tracker:
    """The mount points and images the baseline used."""

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


def util_linux_cycle(tracker: Tracker, image: Path, paths: Paths) -> float:
    """Seconds of one create / write / discard by hand: losetup, three mounts, the write,
    three umounts, losetup -d."""
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


def cp_commit(tracker: Tracker, image: Path, paths: Paths, job: CommitJob) -> CommitTiming:
    """The data written to a tmpfs, then ``cp -a`` into IMAGE mounted read-write and
    ``sync``, those two timed."""
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
