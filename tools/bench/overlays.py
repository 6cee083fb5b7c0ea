"""Many live overlays, through the bus: scale, Create and Discard latency at 0 and at N,
restart to ready, and the burst one client can send.

No util-linux baseline compares here; where a baseline makes sense it is the same daemon
measure with 0 overlays, taken in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from overlayd.bus.client import OverlaydClient
from overlayd.bus.names import BUS_NAME, ROOT_PATH, overlay_path
from tools.bench.cleanup import discard_leftovers, wait_released
from tools.bench.daemon import Daemon
from tools.bench.measures import Bench
from tools.bench.report import Row, burst_row, restart_row, scale_rows
from tools.bench.settings import (
    LATENCY_CALLS,
    LIST_CALLS,
    MANAGED_OBJECTS_CALLS,
    SCALE_IMAGE_MIB,
    SCALE_TMPFS,
    SCALE_WARMUP_CALLS,
    BenchError,
    say,
)

MOUNTS_PER_OVERLAY = 3  # the image (read-only), the tmpfs, the overlay
PROBE_NAME = "probe"
BURST_REPLY_SECONDS = 15.0  # a healthy daemon answers 2,000 Introspects well within this
HEALTH_SECONDS = 10.0
LIST_AFTER_RESTART_SECONDS = 60.0
INTROSPECTABLE_IFACE = "org.freedesktop.DBus.Introspectable"


def names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


async def timed_calls(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    """Seconds of COUNT calls, after SCALE_WARMUP_CALLS untimed ones."""
    out: list[float] = []
    for i in range(SCALE_WARMUP_CALLS + count):
        t0 = time.perf_counter()
        await call()
        if i >= SCALE_WARMUP_CALLS:
            out.append(time.perf_counter() - t0)
    return out


# -- the limits a thousand overlays meet ------------------------------------------------


def limits(wanted: int) -> tuple[int, dict[str, Any]]:
    """How many overlays this machine can hold beside what it holds now (the mount table's
    limit), and the limits seen: open files, loop devices, mounts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # ours, inherited by the daemons we start; never above the hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    info: dict[str, Any] = {"open_files": hard, "open_files_soft_before": soft}
    try:
        info["max_loop"] = int(Path("/sys/module/loop/parameters/max_loop").read_text())
    except (OSError, ValueError):
        info["max_loop"] = None
    info["loop_devices"] = loop_devices()
    try:
        mount_max = int(Path("/proc/sys/fs/mount-max").read_text())
    except (OSError, ValueError):
        mount_max = 100_000
    with open("/proc/self/mountinfo") as f:
        mounts = sum(1 for _ in f)
    info["mount_max"], info["mounts"] = mount_max, mounts
    room = (mount_max - mounts - 100) // MOUNTS_PER_OVERLAY
    return max(1, min(wanted, room)), info


def loop_devices() -> int:
    """Loop devices that exist, attached or not (/dev/loop-control adds them on demand)."""
    return sum(1 for n in os.listdir("/sys/block") if n.startswith("loop"))


async def fill(daemon: Daemon, image: Path, wanted: list[str]) -> tuple[list[str], list[float],
                                                                           str]:
    """Create WANTED one after the other; the names created, the seconds of each, and the
    error that stopped it early ('' when all were made)."""
    made: list[str] = []
    seconds: list[float] = []
    for i, name in enumerate(wanted):
        if i and i % 200 == 0:
            say(f"  {i} overlays")
        t0 = time.perf_counter()
        try:
            await daemon.create(name, image, SCALE_TMPFS)
        except BenchError as e:
            if not made or not daemon.running:
                raise
            return made, seconds, f"{e} ({daemon.log_tail()})"
        seconds.append(time.perf_counter() - t0)
        made.append(name)
    return made, seconds, ""


def limit_note(wanted: int, made: int, error: str, info: dict[str, Any]) -> str:
    if made >= wanted:
        return ""
    if not error:
        return (f"{made} of the {wanted} overlays asked for: the mount table holds "
                f"{info['mounts']} of at most {info['mount_max']} mounts (fs.mount-max), "
                f"{MOUNTS_PER_OVERLAY} per overlay")
    return (f"{made} of the {wanted} overlays asked for: the next Create failed: {error}; "
            f"limits: open files {info['open_files']}, max_loop {info['max_loop']}, "
            f"{info['loop_devices']} loop devices at start, {info['mounts']} of "
            f"{info['mount_max']} mounts")


async def latency(daemon: Daemon, image: Path, count: int) -> dict[str, list[float]]:
    """Seconds of COUNT Create and COUNT Discard calls of one more overlay, one pair after
    the other (after one untimed pair)."""
    create: list[float] = []
    discard: list[float] = []
    for i in range(1 + count):
        t0 = time.perf_counter()
        await daemon.create(PROBE_NAME, image, SCALE_TMPFS)
        t1 = time.perf_counter()
        await daemon.discard(PROBE_NAME)
        t2 = time.perf_counter()
        if i:
            create.append(t1 - t0)
            discard.append(t2 - t1)
    return {"create_seconds": create, "discard_seconds": discard}


# -- scale ------------------------------------------------------------------------------


async def scale(bench: Bench) -> list[Row]:
    wanted = bench.settings.overlays
    n, info = limits(wanted)
    bench.raw["limits"] = info
    say(f"scale: {n} overlays through a fresh daemon; Create and Discard x {LATENCY_CALLS} at 0 "
        f"and at {n}; ListOverlays x {LIST_CALLS}, GetManagedObjects x {MANAGED_OBJECTS_CALLS}")
    image = bench.image("scale", SCALE_IMAGE_MIB)
    daemon = await bench.start_daemon()
    try:
        result = await scale_with(bench, daemon, image, n)
    finally:
        bench.stop_daemons()
    result["limit_note"] = limit_note(wanted, result["overlays"], result.pop("error"), info)
    bench.raw["scale"] = result
    return scale_rows(result)


async def scale_with(bench: Bench, daemon: Daemon, image: Path, n: int) -> dict[str, Any]:
    rss = {"0": daemon.rss_mib()}
    bus_rss = {"0": daemon.bus_daemon_rss_mib()}
    if await daemon.list_overlays():
        raise BenchError("the fresh daemon already has overlays.")
    at0 = await latency(daemon, image, LATENCY_CALLS)
    at0["managed_objects_seconds"] = await timed_calls(daemon.managed_objects,
                                                       MANAGED_OBJECTS_CALLS)
    at0["managed_objects_busctl_seconds"] = await timed_calls(daemon.managed_objects_busctl,
                                                              MANAGED_OBJECTS_CALLS)
    made, create, error = await fill(daemon, image, names("s", n))
    n = len(made)
    bench.raw["limits"]["loop_devices_at_n"] = loop_devices()
    listed = await daemon.list_overlays()
    if sorted(listed) != [(name, overlay_path(name)) for name in made]:
        raise BenchError(f"ListOverlays lists {len(listed)} overlays, not the {n} created.")
    objects = await daemon.managed_objects()
    if sorted(objects) != sorted(overlay_path(name) for name in made):
        raise BenchError(f"GetManagedObjects has {len(objects)} objects, not {n}.")
    list_s = await timed_calls(daemon.list_overlays, LIST_CALLS)
    objects_s = await timed_calls(daemon.managed_objects, MANAGED_OBJECTS_CALLS)
    objects_busctl_s = await timed_calls(daemon.managed_objects_busctl, MANAGED_OBJECTS_CALLS)
    rss[str(n)] = daemon.rss_mib()
    bus_rss[str(n)] = daemon.bus_daemon_rss_mib()
    fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
    atn = await latency(daemon, image, LATENCY_CALLS)
    discard: list[float] = []
    for i, name in enumerate(made):
        if i and i % 200 == 0:
            say(f"  {n - i} overlays left")
        t0 = time.perf_counter()
        await daemon.discard(name)
        discard.append(time.perf_counter() - t0)
    if await daemon.list_overlays() or await daemon.managed_objects():
        raise BenchError(f"overlays are still listed after discarding all {n}.")
    left = wait_released(bench.paths.busrun, image)
    if left:
        raise BenchError(f"left after discarding all {n} overlays: {', '.join(left[:5])}")
    rss["after_discard"] = daemon.rss_mib()
    bus_rss["after_discard"] = daemon.bus_daemon_rss_mib()
    return {"overlays": n, "error": error, "create_seconds": create,
            "discard_seconds": discard, "list_overlays_seconds": list_s,
            "managed_objects_seconds": objects_s,
            "managed_objects_busctl_seconds": objects_busctl_s, "at_0": at0, "at_n": atn,
            "rss_mib": rss, "dbus_daemon_rss_mib": bus_rss, "daemon_fds_at_n": fds}


# -- restart ----------------------------------------------------------------------------


async def restart(bench: Bench) -> Row:
    """SIGTERM a daemon (no --discard-on-exit: its overlays stay) and start a new one over
    the same runtime directory; the time from the signal until the new one has printed its
    ready line and lists every overlay. With 0 overlays (the baseline), then with N. A
    restart that fails is reported as such, and the overlays left are discarded here."""
    wanted = bench.settings.overlays
    n, info = limits(wanted)
    say(f"restart: a daemon with 0 overlays, then with {n}")
    image = bench.image("restart", SCALE_IMAGE_MIB)
    result: dict[str, Any] = {"overlays": n, "at_0": {}, "at_n": {}}
    bench.raw["restart"] = result
    try:
        daemon = await bench.start_daemon(discard_on_exit=False)
        result["at_0"], new = await restart_once(bench, daemon, [], discard_on_exit=False)
        if new is None:
            result["at_n"]["error"] = "not tried: the restart with 0 overlays failed"
        else:
            made, _, error = await fill(new, image, names("r", n))
            result["overlays"] = len(made)
            result["limit_note"] = limit_note(wanted, len(made), error, info)
            result["at_n"], _ = await restart_once(bench, new, made, discard_on_exit=True)
    except BenchError as e:  # the daemon before the restart failed: a figure, not a crash
        result["at_n"]["error"] = f"before the restart: {e}"
    finally:
        bench.stop_daemons()  # the last one discards its overlays on exit
    failed = any("error" in result[k] for k in ("at_0", "at_n"))
    if failed:  # no daemon of ours runs now: discard what is left in-process
        say("restart failed: discarding the overlays left, in-process")
        bench.problems += [f"after the failed restart: {p}"
                           for p in await discard_leftovers(bench.bus_config)]
    left = wait_released(bench.paths.busrun, image)
    if left:
        raise BenchError(f"left after the restart measurement: {', '.join(left[:5])}")
    return restart_row(result)


async def restart_once(bench: Bench, old: Daemon, made: list[str], *,
                       discard_on_exit: bool) -> tuple[dict[str, Any], Daemon | None]:
    """Restart OLD (holding MADE); its figures and the new daemon (None if it failed). A
    new daemon that does not come up, or does not list MADE, is an error in the figures."""
    out: dict[str, Any] = {"overlays": len(made)}
    t0 = time.perf_counter()
    bench.problems += old.stop()
    out["stop_seconds"] = time.perf_counter() - t0
    new = bench.new_daemon(discard_on_exit=discard_on_exit)
    try:
        t1 = time.perf_counter()
        new.start()
        out["ready_line_seconds"] = time.perf_counter() - t1
        listed = await asyncio.wait_for(list_fresh(new), timeout=LIST_AFTER_RESTART_SECONDS)
        seconds = time.perf_counter() - t0
    except (BenchError, TimeoutError) as e:
        why = str(e) or f"no answer to ListOverlays within {LIST_AFTER_RESTART_SECONDS:.0f} s"
        status = new.returncode
        if status is not None and "did not start" not in why:
            why += f" (it exited with status {status}: {new.log_tail()})"
        out["error"] = f"the new daemon failed: {why}"
        out["log_tail"] = new.log_tail(10).split(" | ")
        bench.problems += new.stop(expect_exit=True)
        return out, None
    if sorted(name for name, _ in listed) != made:
        out["error"] = f"the new daemon lists {len(listed)} overlays, not the {len(made)} left"
        return out, None
    out["seconds"] = seconds
    return out, new


async def list_fresh(daemon: Daemon) -> list[tuple[str, str]]:
    await daemon.connect()
    return await daemon.list_overlays()


# -- burst ------------------------------------------------------------------------------


async def burst(bench: Bench) -> Row:
    """Bursts of calls in flight on one connection, sent by a raw dbus-next send loop
    without waiting for replies, of growing size, to a fresh daemon; after each, the daemon
    must still run and answer a fresh client. The largest burst after which it did."""
    sizes = bench.settings.burst
    say(f"burst: {', '.join(map(str, sizes))} Introspect calls in flight on one connection")
    daemon = await bench.start_daemon()
    steps: list[dict[str, Any]] = []
    result: dict[str, Any] = {"call": "Introspect", "sizes": list(sizes), "steps": steps,
                              "largest_harmless": 0}
    try:
        daemon.disconnect()  # only fresh clients from now on
        for calls in sizes:
            step = await burst_once(daemon, calls)
            steps.append(step)
            if not step["harmless"]:
                break
            result["largest_harmless"] = calls
    finally:
        status = daemon.returncode
        bench.problems += daemon.stop(expect_exit=status is not None)
        if status is not None:
            result["exit_status"] = status
    bench.raw["burst"] = result
    return burst_row(result)


async def burst_once(daemon: Daemon, calls: int) -> dict[str, Any]:
    bus = await MessageBus(bus_address=daemon.address).connect()
    serials: set[int] = set()
    replies = {"return": 0, "error": 0}

    def on_message(msg: Message) -> bool:
        if msg.reply_serial in serials:
            replies["error" if msg.message_type is MessageType.ERROR else "return"] += 1
            return True
        return False

    bus.add_message_handler(on_message)
    sent: list[asyncio.Future[None]] = []
    t0 = time.perf_counter()
    for _ in range(calls):
        msg = Message(destination=BUS_NAME, path=ROOT_PATH, interface=INTROSPECTABLE_IFACE,
                      member="Introspect")
        sent.append(bus.send(msg))
        serials.add(msg.serial)
    deadline = time.monotonic() + BURST_REPLY_SECONDS
    while (sum(replies.values()) < calls and daemon.running and bus.connected
           and time.monotonic() < deadline):
        await asyncio.sleep(0.01)
    seconds = time.perf_counter() - t0
    client_error = next((str(f.exception()) for f in sent if f.done() and f.exception()), "")
    await close(bus)
    await asyncio.sleep(0.2)  # let a daemon that is going down go
    step: dict[str, Any] = {"calls": calls, "replies": replies["return"],
                            "errors": replies["error"], "seconds": seconds}
    if client_error:
        step["client_error"] = client_error  # the sender's own dbus-next writer gave up
    step["harm"] = await harm(daemon)
    step["harmless"] = not step["harm"]
    return step


async def harm(daemon: Daemon) -> str:
    """'' when the daemon runs and a fresh client gets an answer to ListOverlays; else why."""
    if not daemon.running:
        return f"the daemon exited with status {daemon.returncode}: {daemon.log_tail()}"
    try:
        client = await asyncio.wait_for(
            OverlaydClient.connect(interactive=False, address=daemon.address),
            timeout=HEALTH_SECONDS)
    except Exception as e:
        return f"a fresh client cannot connect: {e}"
    try:
        await asyncio.wait_for(client.overlays(), timeout=HEALTH_SECONDS)
    except Exception as e:
        alive = "running" if daemon.running else f"exited with status {daemon.returncode}"
        return f"a fresh client got no answer to ListOverlays ({e or 'timeout'}); it {alive}"
    finally:
        await close(client.bus)
    return ""


async def close(bus: MessageBus) -> None:
    """Disconnect BUS and collect how its connection ended (an EOF, if the daemon died),
    so that nothing is left unretrieved."""
    with contextlib.suppress(Exception):
        bus.disconnect()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(bus.wait_for_disconnect(), timeout=1)
