"""A throw-away container booting real systemd, for end-to-end tests of overlayd's units.

How it is built (no systemd runs on the host, so no machined, no ``machinectl``, no
``systemctl -M``):

* The process tree is ``setpriv --pdeathsig TERM`` -> ``bash`` (stage 1) -> ``exec unshare
  --mount --propagation private bash`` (stage 2) -> ``exec systemd-nspawn --boot``: one PID
  from start to end (``Container.nspawn_pid``).  Stage 1 first moves itself into a private
  child cgroup in every hierarchy (v1 controllers, name=systemd, unified): without a host
  systemd nobody owns the cgroup tree, and nspawn ``--keep-unit`` plus the container's
  systemd would otherwise create init.scope, system.slice... in whatever cgroup we run in.
* Stage 2 runs in a private mount namespace.  There it mounts a tmpfs over /run/systemd
  (nspawn keeps its bookkeeping in /run/systemd/nspawn on the "host" side), a tmpfs at
  WORKDIR/tmpfs, and an overlay at WORKDIR/root with lowerdir=/ (the host root file system)
  and its upper and work directories on that tmpfs.  Nothing of it is ever visible in the
  host's mount table, and all of it disappears when the last process of the namespace exits,
  even if the test runner is killed.
* Stage 2 then reports "ready" on a pipe and blocks reading its stdin.  Meanwhile the Python
  side seeds the root (machine-id, masked units) and calls ``prepare(root)`` with
  ``root = /proc/NSPAWN_PID/root/WORKDIR/root``: a path walk through ``/proc/PID/root`` follows
  the mount table of PID's namespace, so the overlay is reachable from the host without
  entering the namespace.  Writing "go" starts nspawn; closing stdin instead makes stage 2
  exit (that is how a failing ``prepare`` aborts).
* The container is reached with ``nsenter -t LEADER -a`` (LEADER is the container's PID 1 as
  seen from the host) and, for D-Bus, ``unix:path=/proc/LEADER/root/run/dbus/system_bus_socket``.
* ``stop()`` sends SIGTERM to nspawn (nspawn turns it into SIGRTMIN+3 for the container's
  systemd: a clean poweroff), then kills by PID whatever is left in its own cgroups, removes
  those cgroups and checks that nothing is left.

Pitfalls:
* Absolute symlinks inside ``root`` (before and after boot) are resolved against the HOST's
  root, not the container's, when they are followed through ``/proc/PID/root``.  Write
  through real directories only (Debian's /lib, /bin, /sbin are relative links into usr/ and
  are fine; /etc/resolv.conf or /etc/mtab are not).
* nspawn mounts a tmpfs on the container's /tmp (and /run): the host's /tmp, where pytest's
  tmp_path lives, is not visible inside, and what ``prepare`` writes there is hidden.  Bind
  what the container needs (``binds=``/``rw_binds=``).  The rest of the host's root file
  system is visible (read-only in effect: writes go to the tmpfs upper layer), e.g. the repo
  and its venv; other host mounts are not.
* Loop devices: /dev/loop-control is bound in; the /dev/loopN nodes are not binds of the
  host's but the container's own, made by its systemd-tmpfiles early at boot (before any
  mount) from a tmpfiles.d file the harness writes (``loop_node_rules``): one for every
  loop device the host has and LOOP_HEADROOM more, whether the device exists yet or not.
  So a loop device the kernel adds after boot (LOOP_CTL_GET_FREE on a busy host) has its
  node in the container, and a host node that vanishes while nspawn starts cannot fail
  the boot ("Failed to stat /dev/loop415": nspawn stats every --bind= source).
* ``run()`` processes come from outside: they have the host's full capabilities and are in
  the test runner's cgroup, not the container's.  To test what a unit may do, run it as a
  unit (``systemd-run --wait --pipe``).
* The machine's cgroups are hybrid v1 here; the container's systemd logs "System is tainted:
  cgroupsv1".

Only the standard library is used, so this module can be imported anywhere.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = f"overlayd-ct-{os.getpid()}-"

# Units masked in every container.  Nothing fails here without masks, but the host's
# PostgreSQL cluster adds 2.2 s to every boot (0.35 s without it); the timers could fire in
# the middle of a test; gettys and the rest have no use in a throw-away container.
DEFAULT_MASKS: tuple[str, ...] = (
    "postgresql.service",
    "postgresql@.service",
    "e2scrub_reap.service",
    "getty@tty1.service",
    "console-getty.service",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "dpkg-db-backup.timer",
    "logrotate.timer",
    "machines.target",
)

# A fixed environment for everything run in the container: the test runner's own (its venv
# in PATH, SYSTEMD_* or DBUS_* variables) must not leak into the commands under test.
CONTAINER_ENV: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}

# Stage 1: enter the private cgroups, then a private mount namespace (same PID all along).
_STAGE1 = r"""
set -eu
IFS=: read -r -a cgs <<< "$OVERLAYD_CT_CGROUPS"
for d in "${cgs[@]}"; do echo $$ > "$d/cgroup.procs"; done
exec unshare --mount --propagation private bash -c "$OVERLAYD_CT_STAGE2" overlayd-ct "$@"
"""

# Stage 2: mounts (private), report ready on the pipe, wait for "go" on stdin, exec nspawn.
# No mount source may start with "overlayd-" (overlayd.layout.SOURCE_PREFIX): the daemon under
# test would take the container's own root or tmpfs for one of its overlays.
_STAGE2 = r"""
set -euo pipefail
W=$OVERLAYD_CT_WORKDIR
if [ -d /run/systemd ]; then mount -t tmpfs -o mode=755,size=16M ct-test-run /run/systemd
else mount -t tmpfs -o mode=755,size=64M ct-test-run /run; fi
mount -t tmpfs -o "mode=755,size=$OVERLAYD_CT_SIZE" ct-test-tmpfs "$W/tmpfs"
mkdir "$W/tmpfs/upper" "$W/tmpfs/work"
mount -t overlay ct-test-root \
      -o "lowerdir=/,upperdir=$W/tmpfs/upper,workdir=$W/tmpfs/work" "$W/root"
echo ready >&"$OVERLAYD_CT_READY_FD"
eval "exec $OVERLAYD_CT_READY_FD>&-"
go=
read -r go || true
if [ "$go" != go ]; then echo "overlayd-ct: aborted before boot" >&2; exit 99; fi
exec < /dev/null
exec systemd-nspawn "$@"
"""


# Loop nodes the container gets beyond the host's highest loop device: LOOP_CTL_GET_FREE
# hands out the lowest free index, so a container meets an index above that only if the
# host adds this many loop devices while it runs.
LOOP_HEADROOM = 1024
LOOP_MAJOR = 7
LOOP_NODES_CONF = "etc/tmpfiles.d/overlayd-ct-loop-nodes.conf"


def loop_node_rules(headroom: int = LOOP_HEADROOM) -> str:
    """tmpfiles.d lines for /dev/loop0 .. /dev/loopN, N the host's highest loop index plus
    HEADROOM. Listing /sys/block is only a count: nothing breaks if a device goes or comes
    meanwhile, and a node for a device that does not exist is harmless."""
    indices = [int(n[4:]) for n in os.listdir("/sys/block")
               if n.startswith("loop") and n[4:].isdigit()]
    try:  # with max_part > 0 the driver spaces the minors to leave room for partitions
        max_part = int(Path("/sys/module/loop/parameters/max_part").read_text())
    except (OSError, ValueError):
        max_part = 0
    shift = max_part.bit_length()
    last = max(indices, default=-1) + headroom
    return "".join(f"b /dev/loop{n} 0660 root disk - {LOOP_MAJOR}:{n << shift}\n"
                   for n in range(last + 1))


class ContainerError(RuntimeError):
    """The container could not be booted or stopped cleanly."""


class CommandFailed(subprocess.CalledProcessError):
    """A command in the container failed; unlike its base class it shows the output."""

    def __str__(self) -> str:
        return (f"{super().__str__()}\n--- stdout:\n{self.stdout or ''}"
                f"--- stderr:\n{self.stderr or ''}")


def _cgroup_dir(controllers: str, path: str) -> Path | None:
    """The directory of one line of /proc/self/cgroup, in the hybrid or unified layout."""
    path = path.rstrip("/")
    if controllers == "":
        unified = CGROUP_ROOT / "unified"
        base = unified if unified.is_dir() else CGROUP_ROOT
    elif controllers.startswith("name="):
        base = CGROUP_ROOT / controllers[len("name="):]
    else:
        base = CGROUP_ROOT / controllers.split(",")[0]
        if not base.is_dir():
            base = CGROUP_ROOT / controllers
    d = base / path.lstrip("/") if path else base
    return d if d.is_dir() else None


def cgroup_parents() -> list[Path]:
    """The cgroup directories this process is in, one per mounted hierarchy."""
    seen: list[Path] = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            d = _cgroup_dir(controllers, path)
            if d is not None and d not in seen:
                seen.append(d)
    return seen


def own_cgroup_dirs() -> list[Path]:
    """Cgroups made by containers of this process that still exist (for leak checks)."""
    return [c for p in cgroup_parents() for c in p.glob(CGROUP_PREFIX + "*") if c.is_dir()]


def sweep_stale_cgroups() -> list[Path]:
    """Remove the empty cgroups left by a container of a test run that was killed (its
    nspawn then got SIGTERM from the kernel through --pdeathsig and powered off, but nobody
    removed the cgroups).  Only ours by name, only if their creator is gone, only if empty."""
    removed: list[Path] = []
    for parent in cgroup_parents():
        for d in parent.glob("overlayd-ct-*-*"):
            creator = d.name.split("-")[2]
            if not creator.isdigit() or Path(f"/proc/{creator}").exists():
                continue
            if d.is_dir() and not _cgroup_pids(d):
                _remove_cgroup_tree(d)
                if not d.exists():
                    removed.append(d)
    return removed


def mounts_under(path: Path) -> list[str]:
    """Mount points at or under PATH in the host's (our) mount namespace."""
    prefix = str(path).rstrip("/")
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return found


def _children(ppid: int) -> list[tuple[int, str]]:
    """(pid, comm) of the processes whose parent is PPID (no /proc/PID/task/*/children here)."""
    found: list[tuple[int, str]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == ppid:
            found.append((int(entry.name), comm))
    return found


def _cgroup_pids(d: Path) -> list[int]:
    pids: list[int] = []
    for procs in [d / "cgroup.procs", *d.rglob("cgroup.procs")]:
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return sorted(set(pids))


def _mountinfo_devs(path: str) -> set[str]:
    """The "major:minor" of every mount in a mountinfo file."""
    try:
        with open(path) as f:
            return {line.split()[2] for line in f}
    except OSError:
        return set()


def attached_loops() -> dict[str, str]:
    """Attached loop device -> "major:minor" of its backing file's file system."""
    r = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-MAJ:MIN"],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0 or not r.stdout.strip():
        return {}
    return {d["name"]: str(d["back-maj:min"]).strip()
            for d in json.loads(r.stdout)["loopdevices"]}


def _remove_cgroup_tree(d: Path) -> None:
    if not d.is_dir():
        return
    subdirs = sorted((p for p in d.rglob("*") if p.is_dir()),
                     key=lambda p: len(p.parts), reverse=True)
    for sub in [*subdirs, d]:
        with contextlib.suppress(FileNotFoundError):
            sub.rmdir()


_live: weakref.WeakSet[Container] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # a runner that exits without tearing its fixtures down
    for ct in list(_live):
        with contextlib.suppress(Exception):
            ct.stop()


class Container:
    """A booted systemd container; see the module docstring for how it works."""

    def __init__(self, workdir: Path, machine: str) -> None:
        self.workdir = workdir
        self.machine = machine
        self.log_path = workdir / "nspawn.log"
        self.cgroups: list[Path] = []
        self.cgroup_name: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.boot_state: str | None = None
        self.boot_seconds: float | None = None
        self.stop_seconds: float | None = None
        self.forced: str | None = None  # how stop() had to force the container down
        self._nspawn_started = False
        self._overlay_devs: set[str] = set()
        self._stopped = False
        self._log: IO[bytes] | None = None

    # ---------------------------------------------------------------- boot

    @classmethod
    def boot(cls, workdir: Path, *, machine: str = "overlayd-test",
             prepare: Callable[[Path], None] | None = None,
             binds: Sequence[str] = (),
             rw_binds: Sequence[str] = (),
             mask: Iterable[str] = (),
             extra_args: Sequence[str] = (),
             private_network: bool = True,
             tmpfs_size: str = "2G",
             timeout: float = 60.0) -> Container:
        """Boot a container whose root is an overlay of the host's / on a tmpfs.

        workdir: a directory of the caller's (created if missing) that gets root/, tmpfs/
          (mount points, only ever mounted in the private namespace) and nspawn.log.
        prepare: called with the container's root path (writable, on the host side) before
          systemd starts, to install files: ``make install DESTDIR=<root>``, /etc/overlayd/...
        binds: read-only binds, each "SRC" or "SRC:DST" (``--bind-ro=``).  The container
          sees the host's root file system through the overlay, but not the host's /tmp
          (nspawn mounts a tmpfs there) nor other host mounts: bind what it needs from there.
        rw_binds: the same, writable (``--bind=``).
        mask: units to mask in addition to DEFAULT_MASKS.
        extra_args: more systemd-nspawn options.
        Waits until ``systemctl is-system-running`` says running or degraded, else raises
        ContainerError with the nspawn log.  On any failure everything is cleaned up.
        """
        if shutil.which("systemd-nspawn") is None:
            raise ContainerError("systemd-nspawn is missing: apt-get install -y "
                                 "--no-install-recommends systemd-container")
        sweep_stale_cgroups()
        workdir = Path(workdir).resolve()  # /proc/PID/root/... must not meet a symlink
        if any(c in str(workdir) for c in ",:= \t\n\\"):  # overlay options, nspawn binds
            raise ContainerError(f"unusable workdir (has , : = \\ or a space): {workdir}")
        workdir.mkdir(parents=True, exist_ok=True)
        ct = cls(workdir, machine)
        _live.add(ct)
        t0 = time.monotonic()
        try:
            ct._start(prepare, binds, rw_binds, [*DEFAULT_MASKS, *mask], extra_args,
                      private_network, tmpfs_size, timeout)
        except BaseException as e:
            try:
                ct.stop()
            except ContainerError as cleanup:
                e.add_note(f"cleanup after the failed boot also failed: {cleanup}")
            if ct.forced:
                e.add_note(f"stopping the container after the failed boot: {ct.forced}")
            raise
        ct.boot_seconds = time.monotonic() - t0
        return ct

    def _make_cgroups(self) -> None:
        # One name in every hierarchy: on a hybrid host nspawn mirrors its unified cgroup
        # into the name=systemd hierarchy by path, and stop() must find that one too.
        self.cgroup_name = f"{CGROUP_PREFIX}{self.machine}-{uuid.uuid4().hex[:8]}"
        for parent in cgroup_parents():
            d = parent / self.cgroup_name
            d.mkdir()
            self.cgroups.append(d)
            if (parent / "cpuset.cpus").exists():  # cgroup v1 cpuset starts empty
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (d / f).write_text((parent / f).read_text())

    def _start(self, prepare: Callable[[Path], None] | None, binds: Sequence[str],
               rw_binds: Sequence[str], masks: Sequence[str], extra_args: Sequence[str],
               private_network: bool, tmpfs_size: str, timeout: float) -> None:
        w = self.workdir
        for sub in ("root", "tmpfs"):
            (w / sub).mkdir(exist_ok=True)
            if any((w / sub).iterdir()) or mounts_under(w / sub):
                raise ContainerError(f"{w / sub} is not an empty directory")
        self._make_cgroups()
        nspawn = ["--boot", f"--directory={w / 'root'}", f"--machine={self.machine}",
                  "--register=no", "--keep-unit", "--console=pipe", "--quiet",
                  "--link-journal=no"]
        if private_network:
            nspawn.append("--private-network")
        # loop-control is always there while the loop driver is; the loopN nodes are the
        # container's own (module docstring, _seed).
        nspawn.append("--bind=/dev/loop-control")
        nspawn += [f"--bind-ro={b}" for b in binds]
        nspawn += [f"--bind={b}" for b in rw_binds]
        nspawn += list(extra_args)

        env = {**CONTAINER_ENV,
               "OVERLAYD_CT_CGROUPS": ":".join(map(str, self.cgroups)),
               "OVERLAYD_CT_STAGE2": _STAGE2,
               "OVERLAYD_CT_WORKDIR": str(w),
               "OVERLAYD_CT_SIZE": tmpfs_size}
        ready_r, ready_w = os.pipe()
        env["OVERLAYD_CT_READY_FD"] = str(ready_w)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log.write(f"overlayd-ct: systemd-nspawn {' '.join(nspawn)}\n".encode())
        self._log.flush()
        try:
            self.proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM", "bash", "-c", _STAGE1, "overlayd-ct",
                 *nspawn],
                stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
                pass_fds=(ready_w,), env=env, cwd="/")
        finally:
            os.close(ready_w)
        try:
            self._wait_ready(ready_r, timeout)
        finally:
            os.close(ready_r)

        root = Path(f"/proc/{self.proc.pid}/root") / str(w / "root").lstrip("/")
        self._seed(root, self.machine, masks)
        # Overlayfs reports a private st_dev for non-directories: one for files from (or
        # copied up from) the lower layer, one for files new in the upper layer; and so does
        # a loop device backed by such a file.  Remember both to find leaked loops in stop().
        probe = root / f".overlayd-ct-probe-{uuid.uuid4().hex[:8]}"
        probe.touch()
        try:
            for f in (probe, root / "usr/bin/bash"):
                st = os.stat(f)
                self._overlay_devs.add(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
        finally:
            probe.unlink()
        if prepare is not None:
            prepare(root)
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()
        self._nspawn_started = True
        self._find_leader(timeout)
        self._wait_booted(timeout)

    def _wait_ready(self, ready_r: int, timeout: float) -> None:
        assert self.proc is not None
        readable, _, _ = select.select([ready_r], [], [], timeout)
        line = os.read(ready_r, 64) if readable else b""
        if line.strip() != b"ready":
            raise ContainerError(
                "the private mount namespace could not be set up"
                f"{'' if readable else ' in time'}:\n{self.log()}")

    @staticmethod
    def _seed(root: Path, machine: str, masks: Sequence[str]) -> None:
        """What every container needs before it boots; lands in the tmpfs upper layer."""
        # The host's machine-id would make journald and nspawn complain ("Host and machine
        # ids are equal"): a fresh one, as `systemd-id128 new` would make.
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        # systemd sets the hostname from /etc/hostname, which is the host's otherwise.
        (root / "etc/hostname").write_text(machine + "\n")
        conf = root / LOOP_NODES_CONF  # read by systemd-tmpfiles-setup-dev.service
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(loop_node_rules())
        unitdir = root / "etc/systemd/system"
        for unit in masks:
            link = unitdir / unit
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("/dev/null")

    def _find_leader(self, timeout: float) -> None:
        """The container's PID 1 as seen from the host: nspawn's child running systemd."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self.proc.returncode} "
                                     f"before the container started:\n{self.log()}")
            for pid, comm in _children(self.proc.pid):
                if comm == "systemd":
                    self.leader = pid
                    return
            time.sleep(0.01)
        raise ContainerError(f"the container's systemd did not start in {timeout:.0f} s:\n"
                             f"{self.log()}")

    def _wait_booted(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self.proc.returncode} "
                                     f"during boot:\n{self.log()}")
            try:
                r = self.run("systemctl", "is-system-running", check=False, timeout=10)
                state = r.stdout.strip()
            except subprocess.TimeoutExpired:
                state = "(systemctl timed out)"
            if state in ("running", "degraded"):
                self.boot_state = state
                return
            time.sleep(0.05)
        info = []
        for title, cmd in (("pending jobs", ["systemctl", "list-jobs", "--no-legend"]),
                           ("failed units", ["systemctl", "--failed", "--no-legend"]),
                           ("journal", ["journalctl", "-b", "-n", "40", "--no-pager"])):
            try:
                out = self.run(*cmd, check=False, timeout=5).stdout
            except (OSError, subprocess.SubprocessError) as e:
                out = f"({e})"
            info.append(f"--- {title}:\n{out}")
        raise ContainerError(f"the container did not finish booting in {timeout:.0f} s "
                             f"(state {state!r})\n" + "".join(info) +
                             f"--- nspawn log:\n{self.log()}")

    # ---------------------------------------------------------------- use

    @property
    def nspawn_pid(self) -> int | None:
        """The PID of systemd-nspawn (before it, of the shell that set up its namespace)."""
        return self.proc.pid if self.proc is not None else None

    @property
    def root(self) -> Path:
        """The container's root file system, readable and writable from the host."""
        if self.leader is None:
            raise ContainerError("the container is not running")
        return Path(f"/proc/{self.leader}/root")

    @property
    def bus_address(self) -> str:
        """The container's system bus, for busctl --address= or dbus-next on the host."""
        return f"unix:path={self.root}/run/dbus/system_bus_socket"

    def run(self, *cmd: str | os.PathLike[str], uid: int | None = None, check: bool = True,
            input: str | None = None, timeout: float = 60,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run CMD in all of the container's namespaces (as root, or as UID:UID with no
        supplementary groups).  Output is captured as text.  The environment is
        CONTAINER_ENV plus ENV.  On timeout the whole process group is killed."""
        if self.leader is None or self._stopped:
            raise ContainerError("the container is not running")
        argv = ["nsenter", "-t", str(self.leader), "-a"]
        if uid is not None:
            argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        argv += [os.fspath(c) for c in cmd]
        with subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else
                              subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**CONTAINER_ENV, **(env or {})},
                              start_new_session=True) as p:
            try:
                out, err = p.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                # nsenter forks for the PID namespace: killing it alone would leave the
                # command running in the container.  Its session is ours alone.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
                raise
        result = subprocess.CompletedProcess(argv, p.returncode, out, err)
        if check and p.returncode != 0:
            raise CommandFailed(p.returncode, argv, out, err)
        return result

    def failed_units(self) -> list[str]:
        out = self.run("systemctl", "list-units", "--failed", "--plain", "--no-legend",
                       "--full").stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def log(self) -> str:
        """What nspawn (and the container's console) printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"

    # ---------------------------------------------------------------- stop

    def stop(self, timeout: float = 10.0) -> None:
        """Power the container off and remove everything it made.  Idempotent.

        SIGTERM to nspawn (a clean poweroff), up to TIMEOUT seconds; then a second SIGTERM
        (nspawn kills the container at once), then SIGKILL to nspawn and to every process
        left in the container's cgroups, by PID.  Raises ContainerError if anything is left.
        """
        if self._stopped:
            return
        t0 = time.monotonic()
        problems: list[str] = []
        proc = self.proc
        own_devs = self._own_devs()
        if proc is not None:
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # stage 2 still waiting for "go": it exits
            if proc.poll() is None and self._nspawn_started:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            if not self._wait_exit(proc, timeout):
                self.forced = f"no clean poweroff in {timeout:.0f} s"
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                if not self._wait_exit(proc, 3):
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    self.forced += ", nspawn had to be killed"
        self._kill_cgroup_members()
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                problems.append(f"process {proc.pid} (nspawn) does not exit")
        if self._log is not None:
            self._log.close()
        made = [*self.cgroups]
        if self.cgroup_name is not None:  # and what nspawn made by the same name
            made += [d for p in cgroup_parents()
                     if (d := p / self.cgroup_name).is_dir() and d not in made]
        for d in made:
            for _ in range(100):
                _remove_cgroup_tree(d)
                if not d.exists():
                    break
                time.sleep(0.05)
            if d.exists():
                problems.append(f"cgroup left: {d} (pids {_cgroup_pids(d)})")
        for m in mounts_under(self.workdir):
            problems.append(f"mount left on the host: {m}")
        problems += self._detach_leaked_loops(own_devs)
        for sub in ("root", "tmpfs"):  # empty mount points, once the namespace is gone
            with contextlib.suppress(OSError):
                (self.workdir / sub).rmdir()
        self.leader = None
        self._stopped = True
        _live.discard(self)
        self.stop_seconds = time.monotonic() - t0
        if problems:
            raise ContainerError("the container left:\n  " + "\n  ".join(problems))

    def _own_devs(self) -> set[str]:
        """The file systems only the container has (its overlay, its tmpfs upper, nspawn's
        /tmp, /run..., whatever its services mounted): every mount namespace of a process in
        its cgroups and of nspawn, minus the host's own file systems."""
        pids = {p for d in self.cgroups for p in _cgroup_pids(d)}
        if self.proc is not None:
            pids.add(self.proc.pid)
        devs = set(self._overlay_devs)
        seen: set[str] = set()
        for pid in pids:
            try:
                ns = os.readlink(f"/proc/{pid}/ns/mnt")
            except OSError:
                continue
            if ns not in seen:
                seen.add(ns)
                devs |= _mountinfo_devs(f"/proc/{pid}/mountinfo")
        return devs - _mountinfo_devs("/proc/self/mountinfo")

    @staticmethod
    def _detach_leaked_loops(own_devs: set[str]) -> list[str]:
        """Loop devices still backed by a file of the container once it is gone: a test
        forgot to detach them, and they pin the container's tmpfs in memory.  Detached here,
        and reported.  (A loop on a file of the host's own file systems, reached through the
        overlay's lower layer, cannot be told apart from the host's and is not seen.)"""
        if not own_devs:
            return []
        leaked: dict[str, str] = {}
        for _ in range(40):  # a mount that held the loop (autoclear) goes a moment later
            leaked = {n: d for n, d in attached_loops().items() if d in own_devs}
            if not leaked:
                return []
            time.sleep(0.05)
        for name in leaked:
            subprocess.run(["losetup", "--detach", name], capture_output=True, check=False)
        return [f"loop device {n} (file on the container's file system {d}), now detached"
                for n, d in leaked.items()]

    @staticmethod
    def _wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> bool:
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _kill_cgroup_members(self) -> None:
        """SIGKILL, by PID, every process still in one of our cgroups, until none is."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pids = sorted({p for d in self.cgroups for p in _cgroup_pids(d)})
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.proc is not None:
                self.proc.poll()  # reap nspawn if it was among them
            time.sleep(0.05)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
