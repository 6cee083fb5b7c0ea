"""overlayctl's table commands start without pydantic and the models (issue 15: they were
90 % of `overlayctl list`'s start-up); `make bench` measures the time itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("pydantic", "overlayd.model", "overlayd.overlayfile", "overlayd.config",
         "overlayd.render", "rich")


def _modules_after(tmp_path: Path, *argv: str) -> tuple[int, set[str]]:
    code = ("import sys; from overlayd import ctl; rc = ctl.main(sys.argv[1:]); "
            "print(rc); print(' '.join(sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       env={**os.environ,
                            "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"})
    rc, mods = r.stdout.splitlines()[-2:]
    return int(rc), set(mods.split())


def test_list_and_status_import_no_models(tmp_path: Path) -> None:
    for argv in (["list"], ["--json", "status", "x"], ["jobs", "--no-legend"]):
        rc, mods = _modules_after(tmp_path, *argv)
        assert rc == 69  # no daemon there: EX_UNAVAILABLE
        heavy = {m for m in mods if m.split(".")[0] in HEAVY or m in HEAVY}
        assert not heavy, (argv, sorted(heavy))


def test_the_reading_commands_load_neither_dbus_next_nor_asyncio(tmp_path: Path) -> None:
    """list, status, jobs and layers speak the wire protocol themselves (bus/wire.py):
    dbus-next and asyncio were most of what was left of list's start-up."""
    for argv in (["list"], ["status", "x"], ["jobs"], ["layers", "x"]):
        rc, mods = _modules_after(tmp_path, *argv)
        assert rc == 69
        heavy = {m for m in mods if m.split(".")[0] in ("dbus_next", "asyncio", "dataclasses",
                                                          "logging", "shutil")}
        assert not heavy, (argv, sorted(heavy))


def test_schema_still_has_them(tmp_path: Path) -> None:
    rc, mods = _modules_after(tmp_path, "schema")
    assert rc == 0 and "pydantic" in mods
