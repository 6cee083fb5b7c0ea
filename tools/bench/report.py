"""The rows of the result, the table, and the JSON."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from tools.bench.settings import Settings

MS = 1000.0


@dataclass
class Row:
    label: str
    unit: str
    engine: float | None  # overlayd's figure (engine in-process or daemon); None: failed
    baseline: float | None  # measured in the same run; None where nothing compares
    # (">=" or "<=", the aimed overlayd / baseline ratio; without a baseline, or when
    # ABSOLUTE, the aimed figure itself)
    aim: tuple[str, float] | None
    absolute: bool = False
    note: str = ""  # why it failed, or what it fell back to; printed under the table

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.engine is None:
            return None
        return self.engine / self.baseline if self.baseline else float("inf")

    @property
    def met(self) -> bool | None:
        if self.engine is None:
            return False
        if self.aim is None:
            return None
        op, value = self.aim
        x = self.engine if self.absolute or self.ratio is None else self.ratio
        return x <= value if op == "<=" else x >= value

    @property
    def aim_text(self) -> str | None:
        if self.aim is None:
            return None
        text = f"{self.aim[0]} {self.aim[1]:g}"
        return f"{text} {self.unit}" if self.absolute or self.baseline is None else text

    @property
    def status(self) -> str:
        if self.engine is None:
            return "FAILED"
        return {True: "ok", False: "MISSED", None: ""}[self.met]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "unit": self.unit, "engine": self.engine,
                "baseline": self.baseline, "ratio": self.ratio, "aim": self.aim_text,
                "met": self.met, "note": self.note}


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * MS


def cycle_rows(engine: list[float], bus: list[float], util: list[float]) -> list[Row]:
    e, b, u = median_ms(engine), median_ms(bus), median_ms(util)
    return [
        Row("cycle median", "ms", e, u, ("<=", 0.25)),
        Row("cycle p90", "ms", p90(engine) * MS, p90(util) * MS, None),
        Row("cycle median, bus", "ms", b, u, ("<=", 0.25)),
        Row("cycle median, bus: issue 10's aim", "ms", b, u, ("<=", 0.20)),
        Row("cycle p90, bus", "ms", p90(bus) * MS, p90(util) * MS, None),
        Row("bus overhead (bus - engine, medians)", "ms", b - e, None, ("<=", 1.0)),
    ]


def scale_rows(scale: dict[str, Any]) -> list[Row]:
    """SCALE: what overlays.scale measured. The N in the labels is the count reached."""
    n = scale["overlays"]
    at0, atn = scale["at_0"], scale["at_n"]
    note = scale.get("limit_note", "")
    return [
        Row(f"{n} overlays: create, mean", "ms",
            statistics.mean(scale["create_seconds"]) * MS, None, None, note=note),
        Row(f"{n} overlays: ListOverlays median", "ms",
            median_ms(scale["list_overlays_seconds"]), None, None),
        Row(f"{n} overlays: GetManagedObjects median", "ms",
            median_ms(scale["managed_objects_seconds"]),
            median_ms(at0["managed_objects_seconds"]), ("<=", 100.0), absolute=True),
        Row(f"{n} overlays: GetManagedObjects median, busctl as the client", "ms",
            median_ms(scale["managed_objects_busctl_seconds"]),
            median_ms(at0["managed_objects_busctl_seconds"]), None,
            note="the same call from a C client (a busctl process each time): what the "
                 "daemon and the bus cost, without dbus-next's unmarshalling"),
        Row(f"{n} overlays: discard, mean", "ms",
            statistics.mean(scale["discard_seconds"]) * MS, None, None),
        Row(f"create at {n} overlays, median (baseline: at 0)", "ms",
            median_ms(atn["create_seconds"]), median_ms(at0["create_seconds"]), ("<=", 1.5)),
        Row(f"discard at {n} overlays, median (baseline: at 0)", "ms",
            median_ms(atn["discard_seconds"]), median_ms(at0["discard_seconds"]),
            ("<=", 1.5)),
        Row("daemon RSS, 0 overlays", "MiB", scale["rss_mib"]["0"], None, None),
        Row(f"daemon RSS, {n} overlays", "MiB", scale["rss_mib"][str(n)], None, None),
    ]


def restart_row(restart: dict[str, Any]) -> Row:
    n = restart["overlays"]
    at0, atn = restart["at_0"], restart["at_n"]
    base, seconds = at0.get("seconds"), atn.get("seconds")
    notes = [restart.get("limit_note", ""), at0.get("error", ""), atn.get("error", "")]
    return Row(f"restart to ready, {n} overlays (baseline: 0)", "ms",
               None if seconds is None else seconds * MS, None if base is None else base * MS,
               ("<=", 2000.0), absolute=True, note="; ".join(x for x in notes if x))


def burst_row(burst: dict[str, Any]) -> Row:
    harmed = next((step for step in burst["steps"] if not step["harmless"]), None)
    note = ""
    if harmed is not None:
        note = f"harmed by a burst of {harmed['calls']}: {harmed['harm']}"
    elif burst.get("error"):
        note = burst["error"]
    return Row("burst on one connection without harm (Introspect in flight)", "calls",
               float(burst["largest_harmless"]), None, (">=", float(max(burst["sizes"]))),
               note=note)


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 or value.is_integer() else f"{value:.2f}"


def table(rows: list[Row], settings: Settings, raw: dict[str, Any]) -> str:
    head = ("measure", "unit", "overlayd", "baseline", "ratio", "aim", "")
    body = [(r.label, r.unit, "failed" if r.engine is None else fmt(r.engine),
             fmt(r.baseline), "" if r.ratio is None else f"{r.ratio:.3f}", r.aim_text or "",
             r.status) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    right = {2, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [f"overlayd benchmark on Linux {os.uname().release}: {settings.cycles} cycles; "
           f"{settings.overlays} overlays; commits of a {settings.big_mib} MiB file and of "
           f"{settings.small_files} small files, best of {settings.repeat}",
           line(head), line(tuple("-" * w for w in widths)), *(line(b) for b in body)]
    out += [f"note, {r.label}: {r.note}" for r in rows if r.note]
    if "limits" in raw:
        lim = raw["limits"]
        out.append(f"limits: open files {lim['open_files']} (ulimit -n), max_loop "
                   f"{lim['max_loop']} (loop devices at start {lim['loop_devices']}, with the "
                   f"overlays {lim.get('loop_devices_at_n', '?')}: /dev/loop-control adds them),"
                   f" mounts at start {lim['mounts']} of fs.mount-max {lim['mount_max']}")
    out += [
        "overlayd: the engine in-process (OverlayManager); in the rows saying bus, overlays, "
        "restart or burst, the daemon (overlayd --standalone) called over D-Bus by dbus-next",
        "baseline: util-linux commands as subprocesses (cycle); cp -a + sync into the "
        "image mounted read-write (commits); the same daemon measure with 0 overlays where "
        "it says so",
        "ratio: overlayd / baseline; for ms lower is better, for rates higher is better; "
        "an aim with a unit is on the figure itself, without one on the ratio"]
    medians = [f"{k} {raw[k]['median_ratio']:.3f}" for k in ("big", "small")
               if "median_ratio" in raw.get(k, {})]
    if medians:
        out.append("commits, ratio of the medians instead of the best samples: "
                   + ", ".join(medians))
    return "\n".join(out)


def as_json(rows: list[Row], settings: Settings, raw: dict[str, Any],
            warnings: list[str]) -> str:
    doc = {"kernel": os.uname().release, "settings": asdict(settings),
           "results": [r.as_dict() for r in rows], "raw": raw, "warnings": warnings}
    return json.dumps(doc, indent=2)
