"""Micro-benchmark: one mount looked up with statx+statmount against reading mountinfo.

    .venv/bin/python -m tools.bench.mounttable [EXTRA_MOUNTS ...]   (root; default 0 1000)

Mounts EXTRA_MOUNTS small tmpfs of its own under a fresh directory in /tmp, times each
way, and unmounts them (and only them) again in a finally block.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

from overlayd.host import mounttable
from overlayd.host.mounttable import read_mounts
from overlayd.host.syscalls import FsContext, umount2


def per_call(fn: Callable[[], object], seconds: float = 0.5) -> float:
    """Microseconds per call: the best of five runs of as many calls as fit in SECONDS/5."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 10:
        fn()
        n += 1
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n)
    return best * 1e6


def bench(extra: int) -> None:
    base = tempfile.mkdtemp(prefix="bench-mounttable-")
    made: list[str] = []
    try:
        for i in range(extra):
            d = os.path.join(base, f"m{i}")
            os.mkdir(d)
            with FsContext("tmpfs") as fc:
                fc.set_string("source", f"bench-{i}")
                fc.set_string("size", "64k")
                fc.create()
                fc.mount_at(d)
            made.append(d)
        target = os.path.join(base, "target")
        os.mkdir(target)
        with FsContext("tmpfs") as fc:
            fc.set_string("source", "bench-target")
            fc.create()
            fc.mount_at(target)
        made.append(target)

        def old_way() -> object:
            found = [m for m in read_mounts() if m.target == target]
            return found[-1] if found else None

        def old_below() -> object:
            return [m for m in read_mounts() if m.target == target
                    or m.target.startswith(target + "/")]

        assert mounttable.mount_at(target) == old_way()
        total = len(read_mounts())
        rows = [("read_mounts() + filter (today)", per_call(old_way)),
                ("mount_at() via statx+statmount", per_call(lambda: mounttable.mount_at(target))),
                ("mounts_below(mount point), syscalls",
                 per_call(lambda: mounttable.mounts_below(target))),
                ("mounts_below(mount point), read_mounts", per_call(old_below)),
                ("mount_at(not a mount point)",
                 per_call(lambda: mounttable.mount_at(base)))]
        if extra:
            rows.append((f"mounts_below(dir with {extra} mounts), syscalls",
                         per_call(lambda: mounttable.mounts_below(base))))
        mounttable._force_backend("mountinfo")
        try:
            rows.append(("mount_at() forced to mountinfo",
                         per_call(lambda: mounttable.mount_at(target))))
        finally:
            mounttable._force_backend(None)
        print(f"{total} mounts in the table ({extra} extra), backend {mounttable.backend()}:")
        for label, us in rows:
            print(f"  {label:44} {us:10.1f} us/call")
    finally:
        for d in reversed(made):
            umount2(d)
        shutil.rmtree(base)


def main() -> None:
    for extra in [int(a) for a in sys.argv[1:]] or [0, 1000]:
        bench(extra)


if __name__ == "__main__":
    main()
