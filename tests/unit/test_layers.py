"""The layer rule, enforced: each layer imports only what its job needs.

- pure core: no bus library, no systemd, no kernel access (ctypes, fcntl, subprocess),
  no host implementation;
- the manager and the procedures reach the kernel only through the Host protocol;
- only overlayd/host/ touches the kernel; only overlayd/log.py imports systemd;
  only overlayd/bus/ imports dbus_next.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "overlayd"
CORE = ["model", "errors", "config", "layout", "fstype", "checks", "state", "rollback"]
KERNEL_MODULES = {"ctypes", "fcntl", "subprocess"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("name", CORE)
def test_core_is_pure(name: str) -> None:
    used = imports(PKG / f"{name}.py")
    assert not top(used) & ({"dbus_next", "systemd"} | KERNEL_MODULES)
    assert not {u for u in used if u.startswith("overlayd.host") and u != "overlayd.host.mountinfo"}


@pytest.mark.parametrize("name", ["manager", "ops"])
def test_engine_uses_the_host_protocol_only(name: str) -> None:
    used = imports(PKG / f"{name}.py")
    assert not top(used) & ({"dbus_next", "systemd"} | KERNEL_MODULES)
    host = {u for u in used if u.startswith("overlayd.host")}
    assert host <= {"overlayd.host.base", "overlayd.host.mountinfo"}


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_only_the_right_layer_imports_each_library(path: Path) -> None:
    rel = path.relative_to(PKG).as_posix()
    used = top(imports(path))
    if "systemd" in used:
        assert rel == "log.py"
    if "dbus_next" in used:
        assert rel.startswith("bus/")
    if used & {"ctypes", "fcntl"}:
        assert rel.startswith("host/")
    if "subprocess" in used:
        assert rel in {"demo.py"}, "the daemon talks to the kernel through syscalls"
