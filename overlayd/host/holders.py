"""Which processes hold files under a mount: for a busy message that names them."""

from __future__ import annotations

import os

from overlayd.layout import is_within


def _fd_mount_ids(pid: str) -> dict[str, int]:
    ids: dict[str, int] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return ids
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("mnt_id:"):
                        ids[fd] = int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue
    return ids


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def find_holders(target: str, mount_ids: set[int]) -> list[tuple[int, str]]:
    """(pid, command) of processes with an open file (by mount id), cwd, root, executable
    or mapping under TARGET."""
    found: list[tuple[int, str]] = []
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        held = any(mid in mount_ids for mid in _fd_mount_ids(pid).values())
        if not held:
            for link in ("cwd", "root", "exe"):
                try:
                    if is_within(os.readlink(f"/proc/{pid}/{link}"), target):
                        held = True
                        break
                except OSError:
                    continue
        if not held:
            held = _maps_under(pid, target)
        if held:
            found.append((int(pid), _comm(pid)))
    return found


def _maps_under(pid: str, target: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and is_within(parts[5].strip(), target):
                    return True
    except OSError:
        pass
    return False
