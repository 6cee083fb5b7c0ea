"""overlayctl render, schema, and reading NAME.overlay files (for start and stop too). The
models (pydantic) are imported only here, and only when a command needs them, so that the
other commands start fast."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from overlayd.cli.common import Command, did, say
from overlayd.places import DEFAULT_CONFIG, SEARCH_PATH

if TYPE_CHECKING:
    from overlayd.overlayfile import OverlayFile


def overlay_file_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--file", type=Path, help="the .overlay file (default: search "
                   + ", ".join(str(d) for d in SEARCH_PATH) + ")")


def overlay_file(args: argparse.Namespace) -> tuple[Path, OverlayFile]:
    from overlayd import overlayfile  # pydantic: only the commands that read a file need it

    if args.file is not None:
        overlayfile.check_file_name(args.name)
        return args.file, overlayfile.load(args.file)
    return overlayfile.load_named(args.name)


def cmd_render(args: argparse.Namespace) -> int:
    from overlayd.config import load_config
    from overlayd.host.linux import LinuxHost  # memory size only; the bus commands need none
    from overlayd.render import render

    path, spec_file = overlay_file(args)
    units = render(args.name, spec_file, path, load_config(args.config),
                   LinuxHost().system.memory_total())
    for unit, text in units.all() + ([units.on_stop] if units.on_stop else []):
        if args.directory is not None:
            (args.directory / unit).parent.mkdir(exist_ok=True)
            (args.directory / unit).write_text(text)
            did(args, units={**getattr(args, "result", {}).get("units", {}),
                             unit: str(args.directory / unit)})
            say(args, str(args.directory / unit))
        elif args.json:
            did(args, units={**getattr(args, "result", {}).get("units", {}), unit: text})
        else:
            print(f"# {unit}\n{text}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from overlayd import overlayfile

    print(overlayfile.json_schema_text(), end="")
    return 0


def _render_args(p: argparse.ArgumentParser) -> None:
    overlay_file_args(p)
    p.add_argument("--directory", type=Path, help="write the units into DIR instead")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help=f"overlayd's configuration (default {DEFAULT_CONFIG})")


COMMANDS = (
    Command("render", "print the mount units of the overlay in NAME.overlay", local=cmd_render,
            arguments=_render_args),
    Command("schema", "print the JSON Schema of .overlay files", local=cmd_schema),
)
