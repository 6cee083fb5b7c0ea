"""The options, the constants, and the layout of the temporary root."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
WARMUP_CYCLES = 3
CYCLE_TMPFS = 64 * MIB
BASELINE_SOURCE = "overlayd-bench"
TOOLS = ("losetup", "mount", "umount", "mkfs.ext4", "truncate", "cp", "sync", "setpriv",
         "dbus-daemon")

# Many live overlays: one small image shared by all, a small tmpfs each.
SCALE_IMAGE_MIB = 16
SCALE_TMPFS = 16 * MIB
SCALE_WARMUP_CALLS = 2
LIST_CALLS = 50
MANAGED_OBJECTS_CALLS = 20
LATENCY_CALLS = 30  # Create + Discard pairs at 0 and at N live overlays
BURST_SIZES = (50, 100, 200, 500, 1000, 2000)
MAX_OVERLAYS = 10_000  # names s0000 to s9999


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


@dataclass(frozen=True)
class Settings:
    cycles: int
    overlays: int
    big_mib: int
    small_files: int
    repeat: int
    restart: bool  # the restart measurement (it fills a second daemon with --overlays)
    burst: tuple[int, ...]  # burst sizes tried, in order; () for none


def parse_args(argv: list[str] | None, description: str | None) -> tuple[Settings, bool]:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=description)
    p.add_argument("--cycles", type=int, default=200, help="create/write/discard cycles")
    p.add_argument("--overlays", type=int, default=1000,
                   help="overlays a daemon holds at once in the scale and restart "
                        "measurements (default 1000)")
    p.add_argument("--big-mib", type=int, default=512, help="size of the big file, MiB")
    p.add_argument("--small-files", type=int, default=10_000, help="number of 4 KiB files")
    p.add_argument("--repeat", type=int, default=5,
                   help="samples of each commit measurement (the best is reported)")
    p.add_argument("--no-restart", action="store_true",
                   help="skip the restart measurement (it fills a second daemon)")
    p.add_argument("--burst", default=",".join(map(str, BURST_SIZES)), metavar="N,N,...",
                   help="calls in flight on one connection, tried in this order until the "
                        "daemon is harmed ('' skips; default %(default)s)")
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
    if a.overlays > MAX_OVERLAYS:
        p.error(f"--overlays must be at most {MAX_OVERLAYS}")
    try:
        burst = tuple(int(x) for x in a.burst.split(",") if x.strip())
    except ValueError:
        p.error("--burst takes numbers separated by commas")
    if any(n < 1 for n in burst):
        p.error("--burst sizes must be at least 1")
    return Settings(a.cycles, a.overlays, a.big_mib, a.small_files, a.repeat,
                    not a.no_restart, burst), a.json


@dataclass(frozen=True)
class Paths:
    """The layout of the temporary root."""

    root: Path

    @property
    def run(self) -> Path:  # the engine's runtime directory
        return self.root / "run"

    @property
    def busrun(self) -> Path:  # the daemons' runtime directory
        return self.root / "busrun"

    @property
    def daemon_config(self) -> Path:  # the defaults, but max_total_size (Daemon.start)
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
