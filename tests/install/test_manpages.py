"""The man pages: overlayctl(1) and overlayd(8) are generated from the parsers and must be
current; the scdoc ones build; every page renders with man -l, without groff warnings, and
names only pages that exist among ours or the system's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tools import manpages

REPO = Path(__file__).resolve().parents[2]
MAN = REPO / "man"
PAGES = {"overlayctl.1", "overlayd.8", "overlayd.conf.5", "overlayd.overlay.5",
         "overlayd-generator.8"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    for tool in ("scdoc", "man"):
        if shutil.which(tool) is None:
            pytest.fail(f"needs {tool} (make setup)", pytrace=False)
    out = tmp_path_factory.mktemp("man")
    pages = {}
    for scd in MAN.glob("*.scd"):
        page = out / scd.stem
        with scd.open() as src, page.open("w") as dst:
            subprocess.run(["scdoc"], stdin=src, stdout=dst, check=True)
        pages[scd.stem] = page
    for page in MAN.glob("*.[0-9]"):
        pages[page.name] = page
    return pages


def test_generated_pages_are_current() -> None:
    for name, text in manpages.pages().items():
        assert (MAN / name).read_text() == text, \
            f"man/{name} is stale: run .venv/bin/python -m tools.manpages"


def test_every_page_is_there(built: dict[str, Path]) -> None:
    assert set(built) == PAGES


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_renders_with_man(built: dict[str, Path], name: str) -> None:
    r = subprocess.run(["man", "--warnings", "-l", str(built[name])], capture_output=True,
                       text=True, env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": ""})
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    text = r.stdout
    assert "NAME" in text and "SEE ALSO" in text
    title = name.rsplit(".", 1)[0]
    assert text.lstrip().lower().startswith(f"{title}(".lower())
    # every page of ours it refers to exists (on one line each: no hyphenation)
    wide = subprocess.run(["man", "-l", str(built[name])], capture_output=True, text=True,
                          env={**os.environ, "MANWIDTH": "1000"}).stdout
    for ref, sec in set(re.findall(r"\b(overlay[\w.-]*)\((\d)\)", wide)):
        assert f"{ref}.{sec}" in PAGES, f"{name} refers to {ref}({sec})"


def test_overlayctl_page_documents_every_command_and_exit_code(built: dict[str, Path]) -> None:
    text = subprocess.run(["man", "-l", str(built["overlayctl.1"])], capture_output=True,
                          text=True, env={**os.environ, "MANWIDTH": "200"}).stdout
    for cmd in ("list", "status", "create", "commit", "discard", "start", "stop", "render"):
        assert f"overlayctl {cmd}" in text, cmd
    assert "EXIT STATUS" in text
    from overlayd import ctl
    for code in {*ctl.EXIT_CODES.values(), ctl.EXIT_FAILED, ctl.EXIT_UNREACHABLE}:
        assert re.search(rf"^\s+{code}\s", text, re.M), code
