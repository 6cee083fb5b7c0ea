"""Completion for overlayctl: generated from the parser and current; bash completes
commands, options, choices and live overlay names (through `bash -c 'complete ...;
compgen'`-style calls of the completion function, with overlayctl stubbed on PATH)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tools import completion

REPO = Path(__file__).resolve().parents[2]
BASH = REPO / "packaging/completion/overlayctl.bash"
ZSH = REPO / "packaging/completion/overlayctl.zsh"


def test_the_scripts_are_current() -> None:
    for name, text in completion.files().items():
        assert (completion.OUT / name).read_text() == text, \
            f"packaging/completion/{name} is stale: run .venv/bin/python -m tools.completion"


@pytest.fixture
def stub(tmp_path: Path) -> Path:
    """An overlayctl that knows two live overlays and one job."""
    (tmp_path / "overlayctl").write_text(
        "#!/bin/sh\n"
        "case \"$*\" in\n"
        "  *list*) printf 'web   active  1M  /img/web.img  /srv/web\\n"
        "webcache  active  0B  /img/c.img  /srv/c\\n' ;;\n"
        "  *jobs*) printf '7  commit  web  10.0%%  -  -  -  0\\n' ;;\n"
        "esac\n")
    (tmp_path / "overlayctl").chmod(0o755)
    return tmp_path


def complete(stub: Path, line: str) -> list[str]:
    """What bash offers for LINE (the word under the cursor is its last, maybe empty)."""
    words = line.split(" ")
    script = (f"source {BASH}; complete -p overlayctl >/dev/null || exit 9; "
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); "
              f"COMP_CWORD={len(words) - 1}; _overlayctl; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{stub}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    return sorted(x for x in r.stdout.splitlines() if x)


def test_bash_completes_commands_options_choices_and_names(stub: Path) -> None:
    assert complete(stub, "overlayctl st") == ["start", "status", "stop"]
    assert complete(stub, "overlayctl --no-legend st") == ["start", "status", "stop"]
    assert "--no-ask-password" in complete(stub, "overlayctl --no")
    assert "--version" in complete(stub, "overlayctl --")
    assert complete(stub, "overlayctl status w") == ["web", "webcache"]
    assert complete(stub, "overlayctl -q commit webc") == ["webcache"]
    assert complete(stub, "overlayctl status web ") == []  # one NAME only
    assert complete(stub, "overlayctl root ") == ["disable", "enable"]
    assert "--force" in complete(stub, "overlayctl discard web --f")
    assert complete(stub, "overlayctl cancel ") == ["7", "web", "webcache"]
    assert "--mountpoint" in complete(stub, "overlayctl create x --m")
    assert complete(stub, "overlayctl create x --size ") == []  # a value, nothing to offer


def test_bash_completes_files_for_file_options(stub: Path, tmp_path: Path) -> None:
    (tmp_path / "web.overlay").write_text("")
    got = complete(stub, f"overlayctl start web --file {tmp_path}/we")
    assert got == [f"{tmp_path}/web.overlay"]


def test_zsh_script_parses() -> None:
    if shutil.which("zsh") is None:
        pytest.fail("needs zsh (make setup-deb)", pytrace=False)
    r = subprocess.run(["zsh", "-n", str(ZSH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert ZSH.read_text().startswith("#compdef overlayctl\n")
