"""Commit to a layer (issue 14) against making the same layer by hand.

- *overlayd*: ``OverlayManager.commit(target=layer)`` of the big file and of the small
  files, in the engine, timed whole: unmount, the private xattrs dropped, the tool, fsync
  and rename of the layer file, its loop device and mount, a fresh upper, the remount.
- *by hand*: the same tree written into a tmpfs, then the same tool with the same command
  line (``overlayd.host.layerfiles.command``) and ``sync`` of the file, those two timed.
Alternating, a fresh image per overlayd sample, best of ``--repeat`` (at least 9 for the
small files, whose 0.3 s vary by more than the 10 % sought on a shared machine); the
median of the ratios of samples taken one after the other is noted. Aim: ratio <= 1.1,
for erofs (the default) and squashfs.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from overlayd.errors import OverlaydError
from overlayd.host.layerfiles import command
from overlayd.manager import OverlayManager
from overlayd.model import CommitTarget, LayerFormat, parse_spec
from tools.bench.measures import COMMIT_NAME, Bench, drop_commit_overlay
from tools.bench.report import Row
from tools.bench.settings import BASELINE_SOURCE, BenchError, say, sh
from tools.bench.workload import CommitJob, big_job, image_mib, small_job

MIN_SMALL_SAMPLES = 9


async def engine_layer(mgr: OverlayManager, image: Path, mnt: Path, work: CommitJob,
                       fmt: LayerFormat) -> float:
    await mgr.create(parse_spec({"name": COMMIT_NAME, "image": str(image),
                                 "mountpoint": str(mnt), "size": work.tmpfs_size}))
    work.fill(mnt)
    os.sync()
    t0 = time.perf_counter()
    await mgr.commit(COMMIT_NAME, target=CommitTarget.LAYER, layer_format=fmt)
    seconds = time.perf_counter() - t0
    work.check(mnt)  # now served by the layer
    layer = Path(mgr.get(COMMIT_NAME).layers[-1].path)
    await mgr.discard(COMMIT_NAME)
    layer.unlink()
    return seconds


def by_hand(bench: Bench, work: CommitJob, fmt: LayerFormat) -> float:
    src = bench.paths.cp_src
    bench.tracker.mount("-t", "tmpfs", "-o", f"size={work.tmpfs_size}",
                        f"{BASELINE_SOURCE}-layer", target=src)
    try:
        work.fill(src)
        out = bench.paths.root / f"by-hand.{fmt.value}"
        os.sync()
        t0 = time.perf_counter()
        sh(*command(fmt.value, str(src), str(out)))
        sh("sync", str(out))
        seconds = time.perf_counter() - t0
        out.unlink()
    finally:
        bench.tracker.umount(src)
    return seconds


async def layer_row(bench: Bench, mgr: OverlayManager, work: CommitJob,
                    fmt: LayerFormat) -> Row:
    repeat = max(bench.settings.repeat, MIN_SMALL_SAMPLES if work.label == "small" else 1)
    say(f"commit {work.label} to a {fmt.value} layer, and by hand, {repeat} x each")
    engine: list[float] = []
    hand: list[float] = []
    errors: list[str] = []
    pairs: list[float] = []
    for i in range(repeat):
        got = (len(engine), len(hand))
        for side in (("engine", "hand") if i % 2 == 0 else ("hand", "engine")):
            try:
                if side == "engine":
                    image = bench.image(f"layer-{work.label}-{fmt.value}-{i}",
                                        image_mib(bench.settings))
                    engine.append(await engine_layer(mgr, image, bench.paths.engine_mnt,
                                                     work, fmt))
                    image.unlink()
                else:
                    hand.append(by_hand(bench, work, fmt))
            except (OverlaydError, BenchError, OSError) as e:
                errors.append(f"{side} sample {i + 1}: {e}")
                say(f"  {errors[-1]}")
                bench.problems += await drop_commit_overlay(mgr)
        if len(engine) > got[0] and len(hand) > got[1]:
            pairs.append(engine[-1] / hand[-1])
    bench.raw[f"layer_{work.label}_{fmt.value}"] = {"overlayd_seconds": engine,
                                                    "by_hand_seconds": hand,
                                                    "pair_ratios": pairs, "errors": errors}
    notes = [f"{len(errors)} samples failed; {errors[0]}"] if errors else []
    if pairs:
        notes.append(f"median of the {len(pairs)} paired ratios {statistics.median(pairs):.3f}")
    note = "; ".join(notes)
    return Row(f"layer commit {work.label}, {fmt.value} (baseline: the tool by hand + sync)",
               "s", min(engine, default=None), min(hand, default=None), ("<=", 1.1),
               note=note)


async def rows(bench: Bench, mgr: OverlayManager) -> list[Row]:
    out = []
    for work in (small_job(bench.settings.small_files), big_job(bench.settings.big_mib)):
        for fmt in (LayerFormat.EROFS, LayerFormat.SQUASHFS):
            out.append(await layer_row(bench, mgr, work, fmt))
    return out
