"""Overlays that come up at boot, without the daemon (``boot = true`` in NAME.overlay).

``overlayd-generator`` (a systemd generator, run at boot and on daemon-reload) writes
the three mount units of each such overlay and hooks the merged view into
local-fs.target. ``overlayd-prepare NAME`` (run by overlayd-prepare@NAME.service, after
the first two layers are mounted) makes the upper and work directories. When overlayd
starts it finds the three mounts and adopts the overlay (ops.adopt_unrecorded).

Both run early and alone, so they log to stderr, which systemd sends to the kernel log
or the journal, and a bad file never stops the others.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from overlayd import overlayfile
from overlayd.config import DEFAULT_CONFIG, DaemonConfig, load_config
from overlayd.errors import OverlaydError
from overlayd.host.linux import LinuxHost
from overlayd.layout import Layout
from overlayd.render import render

BOOT_RUNTIME_DIR = Path("/run/overlayd")  # overlayd-prepare@.service names it


def _say(msg: str) -> None:
    print(f"overlayd-generator: {msg}", file=sys.stderr)


DEFAULT_UNIT_DIR = Path("/usr/lib/systemd/system")


def unit_dir_of(generator: str) -> Path:
    """Where the units were installed beside this generator (PREFIX/lib/systemd/system)."""
    here = Path(generator).absolute().parent
    if here.name == "system-generators" and (here.parent / "system").is_dir():
        return here.parent / "system"
    return DEFAULT_UNIT_DIR


def generate(out_dir: Path, cfg: DaemonConfig,
             search_path: tuple[Path, ...] = overlayfile.SEARCH_PATH,
             unit_dir: Path = DEFAULT_UNIT_DIR) -> list[str]:
    """Write the units of every boot overlay into OUT_DIR; the names of those done. A boot
    overlay with on_stop = "commit" also gets overlayd@NAME.service pulled in at boot and
    ordered after its mounts (a drop-in), so that shutdown commits before unmounting."""
    done: list[str] = []
    if cfg.runtime_dir != BOOT_RUNTIME_DIR:
        _say(f"boot overlays need runtime_dir = {BOOT_RUNTIME_DIR}; none brought up")
        return done
    files, problems = overlayfile.load_boot(search_path)
    for problem in problems:
        _say(problem)
    memory = LinuxHost().system.memory_total()
    for name, (path, spec_file) in files.items():
        try:
            if os.path.isdir(spec_file.image):
                raise OverlaydError("the image of a boot overlay is a file or a block device, "
                                    "not a directory")
            units = render(name, spec_file, path, cfg, memory, made_by="overlayd-generator")
        except (OverlaydError, OSError) as e:
            _say(f"skipping '{path}': {e}")
            continue
        for unit, text in units.all():
            (out_dir / unit).write_text(text)
        wants = out_dir / "local-fs.target.wants"
        wants.mkdir(exist_ok=True)
        link = wants / units.overlay[0]
        if not link.is_symlink():
            link.symlink_to(Path("..") / units.overlay[0])
        if units.on_stop is not None:
            dropin, text = units.on_stop
            (out_dir / dropin).parent.mkdir(exist_ok=True)
            (out_dir / dropin).write_text(text)
            # After the bus and the daemon: multi-user.target, not local-fs.target.
            instance = Path(dropin).parent.name.removesuffix(".d")
            wants = out_dir / "multi-user.target.wants"
            wants.mkdir(exist_ok=True)
            if not (wants / instance).is_symlink():
                (wants / instance).symlink_to(unit_dir / "overlayd@.service")
        done.append(name)
    return done


def generator_main(argv: list[str] | None = None) -> int:
    """systemd calls generators with three directories: normal, early, late."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        _say("usage: overlayd-generator NORMAL_DIR [EARLY_DIR LATE_DIR]")
        return 2
    try:
        cfg = load_config(DEFAULT_CONFIG)
    except OverlaydError as e:
        _say(f"{e}; no boot overlays")
        return 0
    generate(Path(args[0]), cfg, unit_dir=unit_dir_of(sys.argv[0]))
    return 0  # a generator that fails only makes systemd complain; files are skipped instead


def prepare(name: str, cfg: DaemonConfig) -> str:
    """Make the upper and work directories of boot overlay NAME (idempotent)."""
    layout = Layout.for_overlay(cfg.runtime_dir, name)
    if layout.upper.is_dir() and layout.work.is_dir():
        return f"'{layout.upper}' is ready already"
    LinuxHost().layers.prepare_upper(str(layout.lower), str(layout.upper), str(layout.work))
    return f"made '{layout.upper}' and '{layout.work}'"


def prepare_main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: overlayd-prepare NAME", file=sys.stderr)
        return 2
    try:
        name = overlayfile.check_file_name(args[0])
        print(f"overlayd-prepare: {prepare(name, load_config(DEFAULT_CONFIG))}")
    except OverlaydError as e:
        print(f"overlayd-prepare: {e}", file=sys.stderr)
        return 1
    return 0
