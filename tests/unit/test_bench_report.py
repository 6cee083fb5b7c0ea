"""The bench's own logic that needs no root: options, aims, rows built from raw figures."""

from __future__ import annotations

import pytest

from overlayd.checks import PINNED
from tools.bench.baseline import PINNED_OPTIONS
from tools.bench.report import Row, burst_row, restart_row, table
from tools.bench.settings import BURST_SIZES, parse_args


def test_the_baseline_pins_overlayds_options() -> None:
    assert PINNED_OPTIONS.split(",") == [f"{k}={v}" for k, v in PINNED]


def test_quick_is_short_and_the_thousand_is_the_default() -> None:
    full, _ = parse_args([], None)
    assert full.overlays == 1000 and full.restart and full.burst == BURST_SIZES
    quick, as_json = parse_args(["--quick", "--json"], None)
    assert (quick.cycles, quick.overlays, quick.repeat) == (30, 50, 3) and as_json
    none, _ = parse_args(["--burst", "", "--no-restart"], None)
    assert none.burst == () and not none.restart
    with pytest.raises(SystemExit):
        parse_args(["--burst", "10,x"], None)


def test_an_aim_is_on_the_ratio_unless_absolute() -> None:
    ratio = Row("r", "ms", 2.0, 10.0, ("<=", 0.25))
    assert ratio.ratio == pytest.approx(0.2) and ratio.met and ratio.aim_text == "<= 0.25"
    absolute = Row("a", "ms", 120.0, 0.3, ("<=", 100.0), absolute=True)
    assert absolute.met is False and absolute.aim_text == "<= 100 ms"
    failed = Row("f", "ms", None, 300.0, ("<=", 2000.0), absolute=True, note="why")
    assert failed.ratio is None and failed.met is False and failed.status == "FAILED"
    assert Row("n", "MiB", 37.5, None, None).status == ""


def test_a_failed_restart_is_a_row_with_its_reason() -> None:
    raw = {"overlays": 1000, "at_0": {"seconds": 0.35},
           "at_n": {"error": "the new daemon failed: E2BIG"}, "limit_note": ""}
    row = restart_row(raw)
    assert row.engine is None and row.baseline == pytest.approx(350.0)
    assert row.note == "the new daemon failed: E2BIG"
    ok = restart_row({"overlays": 5, "at_0": {"seconds": 0.3}, "at_n": {"seconds": 0.5}})
    assert ok.met and ok.engine == pytest.approx(500.0)


def test_the_burst_row_names_the_harm() -> None:
    steps = [{"calls": 50, "harmless": True, "harm": ""},
             {"calls": 100, "harmless": False, "harm": "the daemon exited with status 0"}]
    row = burst_row({"sizes": [50, 100, 200], "steps": steps, "largest_harmless": 50})
    assert row.engine == 50 and row.aim == (">=", 200.0) and row.met is False
    assert "a burst of 100: the daemon exited" in row.note
    text = table([row], parse_args(["--quick"], None)[0], {})
    assert "burst" in text and "note, burst" in text
