"""The merge mount through FUSE: fuse-overlayfs (Debian's package) as a server process.

The server must outlive the daemon, as a kernel mount does: it runs in a session of its
own (``start_new_session``; no death signal), and under systemd in a transient scope of
its own (``systemd-run --scope``), so that stopping overlayd.service does not stop it.
It is started as ``overlayd-NAME`` (argv[0]): libfuse names the mount after it, so the
mount table shows source ``overlayd-NAME``, type ``fuse.overlayd-NAME``, which is how the
mount is known to be ours, as the kernel overlay is by its source.

The server's identity (PID and the start time from /proc/PID/stat, and the scope's name)
is written beside the upper, in the upper's own file system (``fuse-server.json``): it
lives and goes with the writes it serves. A server that died leaves its mount behind,
answering ENOTCONN ("Transport endpoint is not connected") to everything; ``reap_dead``
sees that, detaches the dead mount and says so (the writes are still in the upper).
A server is ended only after its mount is gone, by its pidfd, and only when its
identity is the one written at its start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

from overlayd.errors import MountFailed
from overlayd.host.errors import Op, map_os_errors
from overlayd.host.mounttable import mount_at
from overlayd.host.ports import Owned
from overlayd.host.syscalls import MNT_DETACH, umount2
from overlayd.layout import mount_source
from overlayd.mountinfo import MountInfo

PROGRAM = "fuse-overlayfs"
SERVER_FILE = "fuse-server.json"
LOG_FILE = "fuse-overlayfs.log"
START_TIMEOUT = 10.0  # seconds for the mount to appear
END_TIMEOUT = 5.0  # seconds for a server to end by itself once its mount is gone
# Options fuse-overlayfs passes on to the mount (the merged mount's allowed options).
_PASSED = {"ro", "rw", "nosuid", "nodev", "noexec", "noatime", "relatime", "strictatime",
           "nodiratime"}
# Under systemd-run the program is exec'd by path; this sets its argv[0] (the mount's name).
_EXEC_AS = "import os, sys; os.execv(sys.argv[1], sys.argv[2:])"


def fuse_type(name: str) -> str:
    return f"fuse.{mount_source(name)}"


def owns_fuse(name: str, m: MountInfo) -> bool:
    return m.source == mount_source(name) and m.fstype == fuse_type(name)


def under_systemd() -> bool:
    """overlayd runs as a systemd service (INVOCATION_ID is set for every unit's process)
    on a host booted with systemd: the server gets a transient scope of its own."""
    return bool(os.environ.get("INVOCATION_ID")) and os.path.isdir("/run/systemd/system") \
        and shutil.which("systemd-run") is not None


def scope_name(name: str) -> str:
    """The transient unit; overlay names are valid in a unit name as they are."""
    return f"overlayd-fuse-{name}.scope"


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (after the parenthesised command, which may hold spaces);
    None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[19])


class FuseOverlay:
    def __init__(self, *, systemd: bool | None = None) -> None:
        self._systemd = systemd
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # reaped when they end

    def owns(self, name: str) -> Owned:
        return lambda m: owns_fuse(name, m)

    def verify(self, name: str, target: str) -> None:
        top = mount_at(target)
        if top is None or not owns_fuse(name, top):
            raise MountFailed(f"The FUSE overlay did not appear at '{target}' after "
                              "mounting it.")

    # -- starting ---------------------------------------------------------------------------

    def mount(self, name: str, target: str, *, lowers: list[str], upper: str, work: str,
              options: tuple[str, ...], target_fd: int | None = None) -> None:
        program = shutil.which(PROGRAM)
        if program is None:
            raise MountFailed("engine = \"fuse\" needs fuse-overlayfs, which is not installed "
                              "(Debian package fuse-overlayfs).")
        if not os.path.exists("/dev/fuse"):
            raise MountFailed("engine = \"fuse\" needs /dev/fuse, which is missing (modprobe "
                              "fuse; in a container, pass the device in).")
        for path in (*lowers, upper, work):
            if ":" in path or "," in path:  # fuse-overlayfs' option syntax has no escape
                raise MountFailed(f"engine = \"fuse\" cannot use the path '{path}': it holds "
                                  "':' or ','.")
        fds = [target_fd] if target_fd is not None else []
        fds += [int(p.rsplit("/", 1)[1]) for p in lowers if p.startswith("/proc/self/fd/")]
        where = f"/proc/self/fd/{target_fd}" if target_fd is not None else target
        # writeback=0, timeout=0: no writeback cache and no attribute cache in the kernel,
        # so that the view shows what the upper holds (what a commit writes): with them,
        # mtimes were microseconds off, and a directory's stayed old after a copy-up in it.
        opts = [f"lowerdir={':'.join(lowers)}", f"upperdir={upper}", f"workdir={work}",
                "writeback=0", "timeout=0", *(o for o in options if o in _PASSED)]
        args = [mount_source(name), "-f", "-o", ",".join(opts), where]
        systemd = under_systemd() if self._systemd is None else self._systemd
        unit = scope_name(name) if systemd else ""
        if systemd:
            argv = ["systemd-run", "--scope", "--quiet", "--collect", f"--unit={unit}",
                    f"--description=overlayd: the FUSE server of overlay {name}", "--",
                    sys.executable, "-I", "-c", _EXEC_AS, program, *args]
            executable = None
        else:
            argv, executable = args, program
        home = os.path.dirname(upper)  # the upper's own file system
        log_path = os.path.join(home, LOG_FILE)
        with map_os_errors(f"start fuse-overlayfs for '{target}'", Op.MOUNT), \
                open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, executable=executable, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, pass_fds=fds, cwd="/",
                                    start_new_session=True)
        self._children[proc.pid] = proc
        try:
            self._wait_mounted(name, target, proc, log_path)
        except BaseException:
            self._stop(proc.pid, start_time(proc.pid))
            raise
        started = start_time(proc.pid)
        identity = {"pid": proc.pid, "start": started, "unit": unit}
        with map_os_errors("write the FUSE server's identity", Op.FILE):
            tmp = os.path.join(home, SERVER_FILE + ".tmp")
            with open(tmp, "w") as f:
                json.dump(identity, f)
            os.replace(tmp, os.path.join(home, SERVER_FILE))

    def _wait_mounted(self, name: str, target: str, proc: subprocess.Popen[bytes],
                      log_path: str) -> None:
        """Until the mount appears at TARGET; MountFailed with the server's own words if
        it ends first, or after START_TIMEOUT."""
        pidfd = os.pidfd_open(proc.pid)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                top = mount_at(target)
                if top is not None and owns_fuse(name, top):
                    return
                if select.select([pidfd], [], [], 0.005)[0]:
                    proc.wait()
                    raise MountFailed(f"Cannot mount the FUSE overlay at '{target}': "
                                      f"{_last_words(log_path)}")
        finally:
            os.close(pidfd)
        raise MountFailed(f"Cannot mount the FUSE overlay at '{target}': fuse-overlayfs did "
                          f"not mount it within {START_TIMEOUT:.0f} s.")

    # -- the server while it runs, and its end ---------------------------------------------

    def server(self, upper: str) -> tuple[int, int, str] | None:
        """(PID, start time, scope) of the live server written beside UPPER; None if there
        is none, or the process with that PID is another one (its start time differs)."""
        try:
            with open(os.path.join(os.path.dirname(upper), SERVER_FILE)) as f:
                data = json.load(f)
            pid, started, unit = int(data["pid"]), data["start"], str(data.get("unit", ""))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if started is None or start_time(pid) != started or _is_zombie(pid):
            self._reap(pid)
            return None
        return pid, int(started), unit

    def watch_server(self, name: str, upper: str) -> int | None:
        """A pidfd of overlay NAME's live server (readable when it ends); None: none."""
        found = self.server(upper)
        if found is None:
            return None
        try:
            fd = os.pidfd_open(found[0])
        except OSError:
            return None
        if start_time(found[0]) != found[1]:  # the PID was reused in between
            os.close(fd)
            return None
        return fd

    def reap_dead(self, name: str, target: str, upper: str) -> str | None:
        """None while overlay NAME's FUSE mount at TARGET is served (or is not there); a
        sentence when its server is gone: the dead mount (ENOTCONN) is detached then, so
        that Commit and Discard find the mount point free; the writes stay in the upper."""
        top = mount_at(target)
        if top is None or not owns_fuse(name, top) or self.server(upper) is not None:
            return None  # a live server: never asked through the mount (it may be busy)
        try:
            os.statvfs(target)  # a server we have no identity of (killed before saving it)
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                return None
        else:
            return None
        with contextlib.suppress(OSError):
            umount2(target, MNT_DETACH)  # ours (owns_fuse above), and dead
        self._forget(upper)
        return (f"The FUSE server of overlay '{name}' (fuse-overlayfs) ended; its mount "
                "was dropped. Its writes are still in RAM: commit to write them and mount "
                "it again, or discard them.")

    def settle(self, name: str, upper: str) -> None:
        """After the mount is gone: the server ends by itself; if it has not within
        END_TIMEOUT, it is stopped (by its pidfd: this very process)."""
        found = self.server(upper)
        if found is not None:
            self._stop(found[0], found[1], grace=END_TIMEOUT)
        self._forget(upper)

    def _forget(self, upper: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(os.path.dirname(upper), SERVER_FILE))

    def _stop(self, pid: int, started: int | None, *, grace: float = 0.0) -> None:
        if started is None:
            self._reap(pid)
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            self._reap(pid)
            return
        try:
            if start_time(pid) != started:
                return
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(pidfd, sig)
                if select.select([pidfd], [], [], grace if sig is None else 2.0)[0]:
                    break
        finally:
            os.close(pidfd)
            self._reap(pid)

    def _reap(self, pid: int) -> None:
        proc = self._children.get(pid)
        if proc is not None and proc.poll() is not None:
            del self._children[pid]


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] in (b"Z", b"X")


def _last_words(log_path: str) -> str:
    """The server's last error line (its log, in the upper's file system)."""
    try:
        with open(log_path, "rb") as f:
            lines = [ln.strip() for ln in f.read()[-4096:].decode(errors="replace").splitlines()
                     if ln.strip() and "unknown argument ignored" not in ln]
    except OSError:
        lines = []
    return (lines[-1].rstrip(".") + ".") if lines else "fuse-overlayfs ended without a word."
