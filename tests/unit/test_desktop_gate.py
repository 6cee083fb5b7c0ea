"""Without a display server the desktop tests skip, or fail under OVERLAYD_REQUIRE_DESKTOP=1
(CI sets it): a run without Xvfb must never pass by skipping them. The missing Xvfb is a PATH
without it; only collection runs, so nothing starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def collect_desktop(path: Path, require: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERLAYD_REQUIRE_")}
    env["PATH"] = str(path)  # no xvfb-run, no Xvfb
    if require:
        env["OVERLAYD_REQUIRE_DESKTOP"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/desktop/test_restart.py"], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)


def test_no_xvfb_fails_the_desktop_tests_when_they_are_required(tmp_path: Path) -> None:
    r = collect_desktop(tmp_path, require=True)
    assert r.returncode == 3, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "xvfb-run is not installed" in out and "forbids skipping" in out, out


def test_no_xvfb_skips_them_otherwise(tmp_path: Path) -> None:
    r = collect_desktop(tmp_path, require=False)
    assert r.returncode == 0 and "2 skipped" in r.stdout, r.stdout + r.stderr
