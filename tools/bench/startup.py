"""How fast ``overlayctl list`` starts (issue 15: it imported pydantic and the models, 90 % of
its 230-260 ms): the median of runs against a bus address where nothing listens, so the
figure is the start-up (imports, parsing, the connection attempt) and nothing the daemon does;
busctl doing the same is the baseline."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.report import Row

OVERLAYCTL = Path(sys.executable).parent / "overlayctl"
RUNS = 15
AIM_MS = 80.0


def _median_ms(cmd: list[str], env: dict[str, str]) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=False)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def rows(root: Path) -> list[Row]:
    address = f"unix:path={root}/no-bus-here"
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address}
    ours = _median_ms([str(OVERLAYCTL), "list"], env)
    theirs = _median_ms(["busctl", f"--address={address}", "list"], env)
    return [Row(f"overlayctl list start-up, median of {RUNS} (baseline: busctl)", "ms",
                ours, theirs, ("<=", AIM_MS), absolute=True,
                note="" if ours <= AIM_MS else f"above the aim of {AIM_MS:g} ms")]
