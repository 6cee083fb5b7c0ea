"""upper = zram against tmpfs, in one run: the RAM that DATA_MIB MiB of typical writes take
(text, a source tree, already-compressed data), the write throughput, and the
create / write / discard cycle, each as zram / tmpfs."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from overlayd.manager import OverlayManager
from overlayd.model import parse_spec
from tools.bench.measures import Bench, engine_cycle
from tools.bench.report import Row
from tools.bench.settings import MIB, say

DATA_MIB = 256
UPPER_SIZE = 512 * MIB
NAME = "bench-upper"
CYCLES = 9
TEXT_ROOTS = ("/usr/share/perl", "/usr/share/perl5", "/usr/share/doc", "/usr/share/man")
SOURCE_ROOTS = ("/usr/lib/python3", "/usr/lib/python3.11")


def _files(roots: tuple[str, ...], suffixes: tuple[str, ...] = ()) -> list[Path]:
    out: list[Path] = []
    for root in roots:
        for d, _dirs, names in os.walk(root):
            out += [Path(d, n) for n in sorted(names)
                    if (not suffixes or n.endswith(suffixes)) and os.path.isfile(Path(d, n))
                    and not os.path.islink(Path(d, n))]
    return out


def write_text(target: Path) -> None:
    """DATA_MIB MiB of plain text (perl modules, docs, man pages, uncompressed), in 1 MiB
    files: the host's own text, repeated if it has less."""
    files = [f for f in _files(TEXT_ROOTS) if not f.name.endswith((".gz", ".xz", ".bz2"))]
    _concatenated(files, target)


def write_tree(target: Path) -> None:
    """A source tree: the host's Python sources as they are (many small files, their
    directories), copied again under r1/, r2/, ... until DATA_MIB MiB."""
    files = _files(SOURCE_ROOTS, (".py",))
    written, rnd = 0, 0
    while written < DATA_MIB * MIB and files:
        for src in files:
            dst = target / f"r{rnd}" / src.relative_to("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            data = src.read_bytes()
            dst.write_bytes(data)
            written += len(data)
            if written >= DATA_MIB * MIB:
                break
        rnd += 1


def write_random(target: Path) -> None:
    """Already-compressed data (as media and archives are): random bytes, 1 MiB files."""
    target.mkdir(parents=True, exist_ok=True)
    for i in range(DATA_MIB):
        (target / f"r{i:04d}.bin").write_bytes(os.urandom(MIB))


def _concatenated(files: list[Path], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    buf = bytearray()
    n = 0
    while n < DATA_MIB and files:
        for src in files:
            try:
                buf += src.read_bytes()
            except OSError:
                continue
            while len(buf) >= MIB and n < DATA_MIB:
                (target / f"t{n:04d}.txt").write_bytes(buf[:MIB])
                del buf[:MIB]
                n += 1
            if n >= DATA_MIB:
                break


KINDS = {"text": write_text, "source tree": write_tree, "compressed data": write_random}


async def _ram_and_seconds(mgr: OverlayManager, image: Path, upper: str,
                           kind: str) -> tuple[float, float]:
    """MiB of RAM the writes of KIND take with UPPER, and the seconds to write + sync."""
    rec = await mgr.create(parse_spec({"name": NAME, "image": str(image), "upper": upper,
                                       "size": UPPER_SIZE}))
    try:
        base = await mgr.usage(NAME)
        t0 = time.perf_counter()
        KINDS[kind](Path(rec.mountpoint) / "data")
        os.sync()
        seconds = time.perf_counter() - t0
        u = await mgr.usage(NAME)
        ram = (u.compressed - base.compressed) if upper == "zram" else (u.used - base.used)
        return ram / MIB, seconds
    finally:
        await mgr.discard(NAME, force=True)


async def rows(bench: Bench, mgr: OverlayManager) -> list[Row]:
    if not os.path.exists("/sys/class/zram-control"):
        say("uppers: no zram in this kernel; skipped")
        return []
    say(f"uppers: RAM for {DATA_MIB} MiB of text, a source tree, compressed data, zram vs "
        f"tmpfs; write throughput; {CYCLES} cycles each, interleaved")
    image = bench.image("uppers", 64)
    out: list[Row] = []
    speeds: dict[str, float] = {}
    for kind in KINDS:
        zram_mib, zram_s = await _ram_and_seconds(mgr, image, "zram", kind)
        tmpfs_mib, tmpfs_s = await _ram_and_seconds(mgr, image, "tmpfs", kind)
        bench.raw.setdefault("uppers", {})[kind] = {
            "zram_ram_mib": zram_mib, "tmpfs_ram_mib": tmpfs_mib,
            "zram_seconds": zram_s, "tmpfs_seconds": tmpfs_s}
        aim = ("<=", 1.05) if kind == "compressed data" else ("<=", 0.7)
        out.append(Row(f"zram: RAM for {DATA_MIB} MiB of {kind} (vs tmpfs)", "MiB", zram_mib,
                       tmpfs_mib, aim))
        if kind == "compressed data":
            speeds = {"zram": DATA_MIB / zram_s, "tmpfs": DATA_MIB / tmpfs_s}
    out.append(Row(f"zram: write {DATA_MIB} MiB + sync (vs tmpfs)", "MiB/s", speeds["zram"],
                   speeds["tmpfs"], (">=", 0.2)))
    zc: list[float] = []
    tc: list[float] = []
    for _ in range(CYCLES):
        zc.append(await engine_cycle(mgr, image, name=NAME, upper="zram"))
        tc.append(await engine_cycle(mgr, image, name=NAME, upper="tmpfs"))
    bench.raw.setdefault("uppers", {})["cycle_seconds"] = {"zram": zc, "tmpfs": tc}
    out.append(Row("zram: cycle median (vs tmpfs)", "ms", statistics.median(zc) * 1000,
                   statistics.median(tc) * 1000, ("<=", 10.0)))
    return out
