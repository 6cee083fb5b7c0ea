"""engine = "fuse" against the kernel's overlayfs, in one run: write throughput (the big
file + sync), many small files, and the create / write / discard cycle, each as
fuse / kernel, interleaved so that both see the same machine."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

from overlayd.manager import OverlayManager
from overlayd.model import parse_spec
from tools.bench.measures import Bench, engine_cycle
from tools.bench.report import Row
from tools.bench.settings import MIB, say
from tools.bench.workload import write_big, write_tree

NAME = "bench-engine"
CYCLES = 9
SAMPLES = 3  # of each write measurement: the best is kept (noise only slows)


async def _write_seconds(mgr: OverlayManager, image: Path, engine: str,
                         write: str, bench: Bench) -> float:
    s = bench.settings
    rec = await mgr.create(parse_spec({"name": NAME, "image": str(image), "engine": engine,
                                       "size": (s.big_mib + 64) * MIB}))
    try:
        t0 = time.perf_counter()
        if write == "big":
            write_big(Path(rec.mountpoint), s.big_mib)
        else:
            write_tree(Path(rec.mountpoint), s.small_files)
        os.sync()
        return time.perf_counter() - t0
    finally:
        await mgr.discard(NAME, force=True)


async def rows(bench: Bench, mgr: OverlayManager) -> list[Row]:
    if shutil.which("fuse-overlayfs") is None or not os.path.exists("/dev/fuse"):
        say("engines: no fuse-overlayfs or /dev/fuse; skipped")
        return []
    s = bench.settings
    say(f"engines: fuse vs kernel: {s.big_mib} MiB + sync, {s.small_files} files of 4 KiB, "
        f"{CYCLES} create/write/discard cycles; interleaved")
    image = bench.image("engines", 64)
    seconds: dict[str, dict[str, list[float]]] = {"big": {}, "small": {}}
    for write in seconds:
        for _ in range(SAMPLES):
            for engine in ("kernel", "fuse"):
                seconds[write].setdefault(engine, []).append(
                    await _write_seconds(mgr, image, engine, write, bench))
    cycles: dict[str, list[float]] = {"kernel": [], "fuse": []}
    for _ in range(CYCLES):
        for engine in cycles:
            cycles[engine].append(await engine_cycle(mgr, image, name=NAME, engine=engine))
    bench.raw["engines"] = {"seconds": seconds, "cycle_seconds": cycles}
    big = {e: s.big_mib / min(v) for e, v in seconds["big"].items()}
    small = {e: s.small_files / min(v) for e, v in seconds["small"].items()}
    return [
        Row(f"fuse: write {s.big_mib} MiB + sync (vs kernel)", "MiB/s", big["fuse"],
            big["kernel"], (">=", 0.3)),
        Row(f"fuse: write {s.small_files} files of 4 KiB + sync (vs kernel)", "files/s",
            small["fuse"], small["kernel"], (">=", 0.05)),  # a round trip per call
        Row("fuse: cycle median (vs kernel)", "ms", statistics.median(cycles["fuse"]) * 1000,
            statistics.median(cycles["kernel"]) * 1000, ("<=", 10.0)),
    ]
