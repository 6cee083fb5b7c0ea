"""The layer rule is import-linter's contracts in pyproject.toml (run by `make lint` and
here). These tests keep the contracts honest: every module of the package is under one,
and what import-linter cannot see (calls, not imports) is checked by reading the code."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "overlayd"


def contracts() -> list[dict[str, object]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found: list[dict[str, object]] = data["tool"]["importlinter"]["contracts"]
    return found


def modules() -> list[str]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def named_in_contracts() -> set[str]:
    names: set[str] = set()
    for c in contracts():
        for key in ("source_modules", "layers"):
            for entry in c.get(key, []):  # type: ignore[attr-defined]
                names |= {n.strip() for n in str(entry).split("|")}
    return names


@pytest.mark.parametrize("module", [m for m in modules() if m not in ("overlayd",)])
def test_every_module_is_under_a_contract(module: str) -> None:
    covered = named_in_contracts()
    assert any(module == c or module.startswith(c + ".") for c in covered), \
        f"{module} is in no import-linter contract: add it to pyproject.toml"


CALLS_ONLY_IN_HOST = {("os", "fork"), ("asyncio", "create_subprocess_exec"),
                      ("asyncio", "create_subprocess_shell"), ("os", "system")}


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_processes_are_made_only_in_host(path: Path) -> None:
    rel = path.relative_to(PKG).as_posix()
    if rel.startswith("host/"):
        return
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert (node.value.id, node.attr) not in CALLS_ONLY_IN_HOST, \
                f"{rel}:{node.lineno} calls {node.value.id}.{node.attr}; that is host/'s job"


def test_the_contracts_are_kept() -> None:
    tool = Path(sys.executable).parent / "lint-imports"
    if not tool.exists() and shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed")
    r = subprocess.run([str(tool) if tool.exists() else "lint-imports", "--no-cache"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
