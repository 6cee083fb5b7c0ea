"""``overlayd --standalone`` as a child process, called through the project's own client.

The daemon runs in a session of its own, so that a Ctrl-C reaches only the bench, which
stops it in order, and with a parent-death signal (``setpriv --pdeathsig TERM``), so it
stops even if the bench is killed.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from overlayd.bus.client import ClientError, OverlaydClient
from overlayd.bus.names import BUS_NAME, ROOT_PATH
from tools.bench.settings import BenchError, Paths

OVERLAYD = Path(sys.executable).parent / "overlayd"
READY_PREFIX = "DBUS_SYSTEM_BUS_ADDRESS="
DAEMON_START_SECONDS = 60.0  # a restart adopts every overlay left before it is ready
DAEMON_STOP_SECONDS = 180.0  # with --discard-on-exit it discards every overlay first
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"


def rss_mib(pid: int) -> float:
    """Resident memory of process PID (VmRSS), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"process {pid} has no VmRSS")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def processes_mentioning(needles: list[str]) -> list[str]:
    """Processes (not this one) whose command line holds one of NEEDLES: what is left of a
    daemon of ours (its runtime directory) or of its dbus-daemon (its bus directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        cmdline = " ".join(argv).strip()
        if any(n in cmdline for n in needles):
            found.append(f"process {entry}: {cmdline}")
    return found


def is_bus_dir(path: Path) -> bool:
    """A directory --standalone makes for its bus: /run/overlayd-bus-*."""
    return path.parent == Path("/run") and path.name.startswith("overlayd-bus-")


class Daemon:
    """One ``overlayd --standalone`` over the bench's daemon runtime directory, and one
    OverlaydClient connection to its private bus."""

    def __init__(self, paths: Paths, *, discard_on_exit: bool = True) -> None:
        self.paths = paths
        self.discard_on_exit = discard_on_exit
        self.proc: subprocess.Popen[str] | None = None
        self.pid = 0
        self.address = ""
        self.bus_dir: Path | None = None  # /run/overlayd-bus-*, made and removed by it
        self.client: OverlaydClient | None = None
        self.log_offset = 0  # where this daemon's lines start in the shared log

    def start(self) -> float:
        """Start it and wait for its ready line; the seconds that took."""
        # The defaults but one: the scale run's 1,000 overlays of 16 MiB reserve more than
        # max_total_size's default (half the memory) on a small machine; the bench measures
        # the cost of many overlays, not the limit.
        self.paths.daemon_config.write_text('max_total_size = "1T"\n')
        argv = ["setpriv", "--pdeathsig", "TERM", str(OVERLAYD), "--standalone",
                *(["--discard-on-exit"] if self.discard_on_exit else []),
                "--runtime-dir", str(self.paths.busrun), "--config", str(self.paths.daemon_config)]
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}  # log to file
        with open(self.paths.daemon_log, "a") as log:
            self.log_offset = log.tell()
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=log, text=True, env=env,
                                         start_new_session=True)
        self.pid = self.proc.pid  # setpriv execs overlayd: the same process
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], DAEMON_START_SECONDS)
        line = self.proc.stdout.readline().strip() if ready else ""
        seconds = time.perf_counter() - t0
        if not line.startswith(READY_PREFIX):
            why = f"it exited with status {self.proc.poll()}" if self.proc.poll() is not None \
                else f"no address within {DAEMON_START_SECONDS:.0f} s"
            raise BenchError(f"overlayd did not start ({why}): {self.log_tail()}")
        self.address = line.removeprefix(READY_PREFIX)
        socket = next((kv.removeprefix("path=") for kv in
                       self.address.removeprefix("unix:").split(",") if kv.startswith("path=")),
                      "")
        if is_bus_dir(Path(socket).parent):
            self.bus_dir = Path(socket).parent
        return seconds

    async def connect(self) -> OverlaydClient:
        try:
            self.client = await OverlaydClient.connect(interactive=False, address=self.address)
        except ClientError as e:
            raise BenchError(f"cannot connect to the daemon's bus: {e}") from None
        return self.client

    def log_tail(self, lines: int = 1) -> str:
        """The last LINES lines this daemon logged (the last is the one that says why)."""
        try:
            with open(self.paths.daemon_log, errors="replace") as f:
                f.seek(self.log_offset)
                text = [line.strip() for line in f.read().splitlines()]
        except OSError:
            return ""
        # a traceback's marker lines (^^^^, ~~~~) say nothing on one line
        return " | ".join([t for t in text if t.strip("^~ ")][-lines:])

    def disconnect(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                client.close()

    def stop(self, *, expect_exit: bool = False) -> list[str]:
        """SIGTERM by PID and wait (with --discard-on-exit it discards its overlays first)
        and its dbus-daemon is gone. Returns the problems met. Safe to call again.
        EXPECT_EXIT: it may have exited already, with any status (say, a burst killed it)."""
        problems: list[str] = []
        self.disconnect()
        proc, self.proc = self.proc, None
        if proc is None:
            return problems
        if self.bus_dir is None:  # it never printed its address; its dbus-daemon says where
            self.bus_dir = self.find_bus_dir()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=DAEMON_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                problems.append(f"overlayd (pid {proc.pid}) did not stop within "
                                f"{DAEMON_STOP_SECONDS:.0f} s; killed it")
        if proc.returncode != 0 and not expect_exit:
            problems.append(f"overlayd exited with status {proc.returncode}: {self.log_tail()}")
        if proc.stdout is not None:
            proc.stdout.close()
        if self.bus_dir is not None and self.bus_dir.exists():
            deadline = time.monotonic() + 5  # a killed daemon's dbus-daemon is going too
            while processes_mentioning([str(self.bus_dir)]) and time.monotonic() < deadline:
                time.sleep(0.05)
            problems.append(f"overlayd left its bus directory '{self.bus_dir}'; removed it")
            shutil.rmtree(self.bus_dir, ignore_errors=True)
        return problems

    def find_bus_dir(self) -> Path | None:
        """The bus directory named on the command line of its dbus-daemon, if it runs."""
        for pid in children(self.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            for arg in argv:
                config = Path(arg.removeprefix("--config-file="))
                if arg.startswith("--config-file=") and is_bus_dir(config.parent):
                    return config.parent
        return None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def bus_daemon_rss_mib(self) -> float | None:
        """VmRSS of its dbus-daemon, if it can be found."""
        for pid in children(self.pid):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "dbus-daemon":
                        return rss_mib(pid)
            except OSError:
                continue
        return None

    def mountpoint(self, name: str) -> Path:
        """The default mount point (the daemon has no mount_root configured)."""
        return self.paths.busrun / "mnt" / name

    # -- calls, through OverlaydClient; an error reply is a BenchError naming the call --

    @property
    def _client(self) -> OverlaydClient:
        if self.client is None:
            raise BenchError("not connected to the daemon")
        return self.client

    async def create(self, name: str, image: Path, size: int) -> str:
        with bus_errors(f"Create '{name}'"):
            return await self._client.create(name, {"image": str(image), "size": size})

    async def discard(self, name: str) -> None:
        with bus_errors(f"Discard '{name}'"):
            await self._client.discard(name)

    async def list_overlays(self) -> list[tuple[str, str]]:
        with bus_errors("ListOverlays"):
            return await self._client.overlays()

    async def managed_objects(self) -> dict[str, Any]:
        with bus_errors("GetManagedObjects"):
            (objects,) = await self._client.call(ROOT_PATH, OBJECT_MANAGER_IFACE,
                                                 "GetManagedObjects")
        return dict(objects)

    async def managed_objects_busctl(self) -> None:
        """GetManagedObjects with busctl (C, sd-bus) as the client: the daemon's cost and the
        bus's, without dbus-next's pure-Python unmarshalling of a megabyte on our side."""
        r = subprocess.run(["busctl", f"--address={self.address}", "call", BUS_NAME, ROOT_PATH,
                            OBJECT_MANAGER_IFACE, "GetManagedObjects"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           check=False)
        if r.returncode != 0:
            raise BenchError(f"busctl GetManagedObjects failed: {r.stderr.strip()}")

    async def property(self, path: str, name: str) -> Any:
        with bus_errors(f"GetAll of '{path}'"):
            return (await self._client.properties(path))[name]


@contextlib.contextmanager
def bus_errors(call: str) -> Iterator[None]:
    try:
        yield
    except ClientError as e:
        raise BenchError(f"{call} over the bus failed: {e.name}: {e}") from None
