"""A daemon that kills itself (SIGKILL) right after its Nth call to the host: run as a
child process by test_crash.py. Fault injection around the real LinuxHost: every call
really happens on the kernel, and nothing after the Nth does.

    python -m tests.kernel.crashing RUNTIME_DIR IMAGE ACTION N [UPPER [PARTITION]]
ACTION is create, commit, commit-layer, squash, squash-into-image, discard or
discard-force, or create-shared or discard-shared (another overlay of the image, made
beforehand, shares the lower); N = 0 runs to the end and prints the number of calls it
made. PARTITION: create overlays of that partition of the image (issue 15).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from overlayd.config import DaemonConfig
from overlayd.host.linux import LinuxHost
from overlayd.manager import OverlayManager
from overlayd.model import CommitTarget, parse_spec
from tests.kernel.zram_ledger import install_from_environment


class Counter:
    def __init__(self, kill_at: int) -> None:
        self.n = 0
        self.kill_at = kill_at
        self.armed = False

    def tick(self) -> None:
        if not self.armed:
            return
        self.n += 1
        if self.n == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


class Counting:
    """A port whose every method call counts (after it returned)."""

    def __init__(self, inner: Any, counter: Counter) -> None:
        self._inner = inner
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            result = attr(*args, **kw)
            self._counter.tick()
            return result
        return call


class CrashingHost:
    def __init__(self, counter: Counter) -> None:
        real = LinuxHost()
        for port in ("system", "images", "locks", "mounts", "files", "layers", "layerfiles",
                     "upper", "merge"):
            setattr(self, port, Counting(getattr(real, port), counter))


async def main(runtime: str, image: str, action: str, kill_at: int, upper: str,
               partition: int | None = None) -> None:
    counter = Counter(kill_at)
    mgr = OverlayManager(DaemonConfig(runtime_dir=Path(runtime), default_size=16 << 20,
                                      layer_dir=Path(runtime).parent / "layers"),
                         CrashingHost(counter))  # type: ignore[arg-type]
    await mgr.start()
    counter.armed = True
    if action in ("create", "create-shared"):
        await mgr.create(parse_spec({"name": "demo", "image": image, "upper": upper}
                                    | ({"partition": partition} if partition else {})))
    elif action == "commit":
        await mgr.commit("demo")
    elif action == "commit-layer":
        await mgr.commit("demo", target=CommitTarget.LAYER)
    elif action == "squash":
        await mgr.squash("demo")
    elif action == "squash-into-image":
        await mgr.squash("demo", target=CommitTarget.IMAGE)
    else:
        await mgr.discard("demo", force=action == "discard-force")  # or -shared
    await mgr.aclose()
    print(counter.n)


if __name__ == "__main__":
    install_from_environment()  # the test's zram ledger: this process's devices count
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
                     sys.argv[5] if len(sys.argv) > 5 else "tmpfs",
                     int(sys.argv[6]) if len(sys.argv) > 6 else None))
