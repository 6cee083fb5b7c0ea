"""The overlayd-gtk package's files (packaging/desktop) pass their validators."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[2] / "packaging" / "desktop"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("OVERLAYD_REQUIRE_DESKTOP") == "1":
            pytest.fail(f"{name} is not installed (make setup installs it)")
        pytest.skip(f"{name} is not installed")
    return found


def test_the_desktop_file_is_valid() -> None:
    r = subprocess.run([tool("desktop-file-validate"), str(HERE / "org.overlayd.Overlays.desktop")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_the_metainfo_is_valid() -> None:
    """Clean: no error, warning or info (only the pedantic note that the ID, the app's
    reverse-DNS ID, has capitals)."""
    r = subprocess.run([tool("appstreamcli"), "validate", "--no-net", "--pedantic",
                        str(HERE / "org.overlayd.Overlays.metainfo.xml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    notes = [ln for ln in r.stdout.splitlines() if ln[:2] in ("E:", "W:", "I:", "P:")]
    assert all(ln.startswith("P:") and "cid-contains-uppercase-letter" in ln
               for ln in notes), r.stdout


def test_the_metainfo_names_no_invented_url() -> None:
    """No placeholder homepage or screenshot: the project has no public home yet."""
    text = (HERE / "org.overlayd.Overlays.metainfo.xml").read_text()
    assert "example.org" not in text and "example.com" not in text


def test_the_readme_shows_a_screenshot_of_the_app() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    shots = re.findall(r"!\[[^]]*\]\((docs/[^)]+\.png)\)", readme)
    assert shots, "the README shows no screenshot"
    for shot in shots:
        data = (root / shot).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) < 200_000, shot


def test_the_man_page_renders_without_warnings() -> None:
    r = subprocess.run([tool("man"), "--warnings", "-E", "UTF-8", "-l",
                        str(HERE / "overlayd-gtk.1")], capture_output=True, text=True,
                       env=dict(os.environ, MANWIDTH="80"))
    assert r.returncode == 0 and "overlayd-gtk" in r.stdout and not r.stderr.strip(), r.stderr


def test_the_ids_agree_with_the_app() -> None:
    app = (Path(__file__).resolve().parents[2] / "overlayd" / "desktop" / "app.py").read_text()
    assert 'APP_ID = "org.overlayd.Overlays"' in app
    desktop = (HERE / "org.overlayd.Overlays.desktop").read_text()
    assert "Exec=overlayd-gtk\n" in desktop and "Icon=org.overlayd.Overlays\n" in desktop
    assert os.access(HERE / "overlayd-gtk", os.X_OK)
