"""--standalone bus directories: locked for the daemon's life, reclaimed after it died."""

from __future__ import annotations

import os
from pathlib import Path

from overlayd.host.busdir import LOCK, BusDirectory, sweep_stale


def test_a_dead_owners_directory_goes_a_live_ones_stays(tmp_path: Path) -> None:
    live = BusDirectory.create(tmp_path)
    dead = BusDirectory.create(tmp_path)
    os.close(dead._lock_fd)  # what the kernel does when its daemon is killed
    (dead.path / "system_bus_socket").touch()
    assert (live.path / LOCK).is_file() and oct(live.path.stat().st_mode)[-3:] == "755"
    assert sweep_stale(tmp_path) == [dead.path]
    assert live.path.is_dir() and not dead.path.exists()
    live.remove()
    assert list(tmp_path.iterdir()) == []


def test_a_new_start_sweeps_and_leaves_what_it_cannot_judge(tmp_path: Path) -> None:
    older = tmp_path / "overlayd-bus-older"  # an overlayd without locks, maybe running
    older.mkdir()
    (older / "system_bus_socket").touch()
    other = tmp_path / "other-dir"
    other.mkdir()
    (other / LOCK).touch()
    dead = BusDirectory.create(tmp_path)
    os.close(dead._lock_fd)
    new = BusDirectory.create(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["overlayd-bus-older", "other-dir", new.path.name])
    new.remove()
