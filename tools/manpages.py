"""overlayctl(1) and overlayd(8) from their argparse parsers, with argparse-manpage; the
sections argparse has no place for come from man/NAME.include. The pages are committed
(man/overlayctl.1, man/overlayd.8), so that building the package needs no import of overlayd;
tests/unit/test_manpages.py fails when they are stale.

    python -m tools.manpages          rewrite them
    python -m tools.manpages --check  exit 1 if one is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from argparse_manpage.manpage import Manpage

from overlayd import __version__, ctl, daemon

MAN = Path(__file__).resolve().parent.parent / "man"
DATE = "2026-11-30"  # fixed, so that the pages are reproducible


def pages() -> dict[str, str]:
    out = {}
    for parser, name, section, title in (
            (ctl.parser(), "overlayctl", "1", "User Commands"),
            (daemon.parser(), "overlayd", "8", "System Administration")):
        data = {"project_name": "overlayd", "version": __version__, "prog": name,
                "manual_section": section, "manual_title": title, "date": DATE,
                "description": (parser.description or "").split(":")[0],
                "include": str(MAN / f"{name}.include"), "url": None,
                "authors": ["overlayd developers"]}
        parser.epilog = None  # overlayctl's exit codes: the EXIT STATUS section instead
        page = Manpage(parser, _data=data, format="single-commands-section")
        out[f"{name}.{section}"] = str(page)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.manpages")
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    stale = []
    for name, text in pages().items():
        path = MAN / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}: run python -m tools.manpages", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
