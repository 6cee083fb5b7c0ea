"""overlayd under a real systemd: the Debian package (``dpkg -i``) into a throw-away
container, boot it, and drive it the way an admin does (systemctl, busctl, journalctl).

The tests in this module run in order against one container (booting takes about a
second); each says what state it leaves for the next.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from overlayd.events import MESSAGE_IDS, Event
from tests import helpers
from tests.gate import OpenGate
from tests.system.container import CommandFailed, Container
from tests.system.fixtures import container_fixture, deb_install

IMAGES = "/var/lib/overlayd-test"
MANAGER = ("org.overlayd.Overlayd1", "/org/overlayd/Overlayd1", "org.overlayd.Overlayd1.Manager")
BOOT_MOUNT = "run-overlayd-mnt-early.mount"

pytestmark = pytest.mark.system


def install(root: Path) -> None:
    """The Debian package (dpkg -i), plus the admin's .overlay files and images."""
    deb_install(root)
    images = root / IMAGES.lstrip("/")
    images.mkdir(parents=True)
    tree = root / "tmp" / "image-tree"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "hello.txt").write_text("hello from the image\n")
    for name in ("demo", "keep", "early", "fuse"):
        helpers.make_image(images / f"{name}.img", tree, size="32M")
    etc = root / "etc/overlayd"
    (etc / "demo.overlay").write_text(f'image = "{IMAGES}/demo.img"\nsize = "64M"\n')
    (etc / "keep.overlay").write_text(f'image = "{IMAGES}/keep.img"\non_stop = "commit"\n')
    (etc / "early.overlay").write_text(f'image = "{IMAGES}/early.img"\nboot = true\n')


# /dev/fuse: engine = "fuse" (nspawn allows the device; it does not make the node)
ct_fixture = container_fixture(machine="overlayd-e2e", prepare=install, rw_binds=["/dev/fuse"])


@pytest.fixture
def ct(ct_fixture: Container) -> Container:
    return ct_fixture


def image_file(ct: Container, image: str, path: str) -> str | None:
    """A file's content read straight from the image (debugfs), or None if it is not there."""
    r = subprocess.run(["debugfs", "-R", f"cat {path}", str(ct.root) + image],
                       capture_output=True, text=True)
    return None if "File not found" in r.stderr else r.stdout


def busctl(ct: Container, method: str, sig: str = "", *args: str, uid: int | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    return ct.run("busctl", "--system", "call", *MANAGER, method, *([sig, *args] if sig else []),
                  uid=uid, check=check)


def journal(ct: Container, *match: str) -> list[dict[str, str]]:
    r = ct.run("journalctl", "--no-pager", "-o", "json", *match)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_units_verify_inside_the_container(ct: Container) -> None:
    # man pages checked too: the package installed every page Documentation= names
    ct.run("systemd-analyze", "verify", "overlayd.service", "overlayd@demo.service",
           "overlayd-prepare@early.service", f"/run/systemd/generator/{BOOT_MOUNT}")


def test_generator_brought_the_boot_overlay_up_without_the_daemon(ct: Container) -> None:
    assert ct.run("systemctl", "is-active", BOOT_MOUNT).stdout.strip() == "active"
    assert ct.run("systemctl", "is-active", "overlayd.service",
                  check=False).stdout.strip() == "inactive"
    assert ct.run("cat", "/run/overlayd/mnt/early/hello.txt").stdout == "hello from the image\n"


def test_start_instance_creates_from_its_file(ct: Container) -> None:
    ct.run("systemctl", "start", "overlayd@demo.service")
    show = ct.run("systemctl", "show", "overlayd.service", "-p", "ActiveState", "-p", "Type",
                  "-p", "StatusText", "-p", "WatchdogUSec").stdout
    assert "ActiveState=active" in show and "Type=notify" in show
    assert "StatusText=2 overlays live: demo, early" in show  # early: adopted at start
    status = ct.run("systemctl", "status", "--no-pager", "overlayd@demo.service",
                    check=False).stdout
    assert "Overlay 'demo': active" in status
    ct.run("sh", "-c", "echo one > /run/overlayd/mnt/demo/one.txt")


def test_the_daemon_adopted_the_boot_overlay_and_commits_it(ct: Container) -> None:
    listed = busctl(ct, "ListOverlays").stdout
    assert '"early"' in listed and '"demo"' in listed
    ct.run("sh", "-c", "echo boot > /run/overlayd/mnt/early/boot.txt")
    busctl(ct, "Commit", "sa{sv}", "early", "0")
    assert image_file(ct, f"{IMAGES}/early.img", "/boot.txt") == "boot\n"


def test_busctl_commit_writes_the_image(ct: Container) -> None:
    busctl(ct, "Commit", "sa{sv}", "demo", "0")
    assert image_file(ct, f"{IMAGES}/demo.img", "/one.txt") == "one\n"


def test_reload_rereads_the_file_and_never_commits(ct: Container) -> None:
    ct.run("sh", "-c", "echo two > /run/overlayd/mnt/demo/two.txt")
    ct.run("sh", "-c", f"printf 'image = \"{IMAGES}/demo.img\"\\nsize = \"96M\"\\n"
           "mount_options = [\"noexec\"]\\n' > /etc/overlayd/demo.overlay")
    ct.run("systemctl", "reload", "overlayd@demo.service")
    assert image_file(ct, f"{IMAGES}/demo.img", "/two.txt") is None  # reload never commits
    blocks, bsize = ct.run("stat", "-f", "-c", "%b %S", "/run/overlayd/mnt/demo").stdout.split()
    assert int(blocks) * int(bsize) == 96 << 20  # the live tmpfs, its writes kept
    assert ct.run("cat", "/run/overlayd/mnt/demo/two.txt").stdout == "two\n"
    (entry,) = journal(ct, f"MESSAGE_ID={MESSAGE_IDS[Event.RECONFIGURED]}",
                       "OVERLAYD_NAME=demo")
    assert entry["OVERLAYD_CHANGED"] == "size" and entry["OVERLAYD_NOT_CHANGED"] == \
        "mount_options" and entry["PRIORITY"] == "5"
    unit_log = ct.run("journalctl", "--no-pager", "-o", "cat", "-u",
                      "overlayd@demo.service").stdout
    assert "the RAM for its writes is 96M now (was 64M)" in unit_log
    assert "'mount_options'" in unit_log and "cannot change while it is mounted" in unit_log
    status = ct.run("systemctl", "status", "--no-pager", "overlayd@demo.service",
                    check=False).stdout
    assert "commit its writes: overlayctl commit demo" in status
    # committing is overlayctl's
    ct.run("overlayctl", "--no-ask-password", "commit", "demo")
    assert image_file(ct, f"{IMAGES}/demo.img", "/two.txt") == "two\n"


def test_reload_of_the_daemon_rereads_its_configuration(ct: Container) -> None:
    pid = ct.run("systemctl", "show", "overlayd.service", "-p", "MainPID").stdout
    ct.run("sh", "-c", "echo 'default_size = \"40M\"' > /etc/overlayd/overlayd.conf")
    ct.run("systemctl", "reload", "overlayd.service")
    assert ct.run("systemctl", "show", "overlayd.service", "-p", "MainPID").stdout == pid
    assert ct.run("systemctl", "is-active", "overlayd.service").stdout.strip() == "active"
    busctl(ct, "Create", "sa{sv}", "conf", "1", "image", "s", f"{IMAGES}/keep.img")
    size = ct.run("busctl", "--system", "get-property", "org.overlayd.Overlayd1",
                  "/org/overlayd/Overlayd1/overlay/conf", "org.overlayd.Overlayd1.Overlay",
                  "UpperSize").stdout
    assert size.split() == ["t", str(40 << 20)]
    busctl(ct, "Discard", "sa{sv}", "conf", "0")
    # a bad file: logged, naming the file and the setting; the daemon goes on as it was
    ct.run("sh", "-c", "echo 'usage_high = 200' > /etc/overlayd/overlayd.conf")
    ct.run("systemctl", "reload", "overlayd.service")
    assert ct.run("systemctl", "show", "overlayd.service", "-p", "MainPID").stdout == pid
    log = ct.run("journalctl", "--no-pager", "-o", "cat", "-u", "overlayd.service").stdout
    assert "Cannot reload the configuration" in log and "'usage_high'" in log
    assert "/etc/overlayd/overlayd.conf" in log
    ct.run("rm", "/etc/overlayd/overlayd.conf")
    ct.run("systemctl", "reload", "overlayd.service")


def test_polkit_refuses_nobody(ct: Container) -> None:
    r = busctl(ct, "Create", "sa{sv}", "evil", "1", "image", "s", f"{IMAGES}/keep.img",
               uid=65534, check=False)
    assert r.returncode != 0
    r = busctl(ct, "Discard", "sa{sv}", "demo", "0", uid=65534, check=False)
    assert r.returncode != 0
    assert ct.run("test", "-e", "/run/overlayd/mnt/demo/two.txt", check=False).returncode == 0
    denied = journal(ct, f"MESSAGE_ID={MESSAGE_IDS[Event.DENIED]}", "OVERLAYD_UID=65534")
    assert {e.get("OVERLAYD_NAME") for e in denied} >= {"evil", "demo"}
    assert all(e["PRIORITY"] == "5" for e in denied)


def test_restart_keeps_live_overlays(ct: Container) -> None:
    ct.run("sh", "-c", "echo three > /run/overlayd/mnt/demo/three.txt")
    before = ct.run("systemctl", "show", "overlayd.service", "-p", "MainPID").stdout
    ct.run("systemctl", "restart", "overlayd.service")
    assert ct.run("systemctl", "show", "overlayd.service", "-p", "MainPID").stdout != before
    assert ct.run("systemctl", "is-active", "overlayd@demo.service").stdout.strip() == "active"
    assert '"demo"' in busctl(ct, "ListOverlays").stdout
    assert ct.run("cat", "/run/overlayd/mnt/demo/three.txt").stdout == "three\n"
    # visible outside the service: in the container's own mount namespace (PID 1's)
    src = ct.run("findmnt", "-n", "-o", "SOURCE,FSTYPE", "/run/overlayd/mnt/demo").stdout
    assert src.split() == ["overlayd-demo", "overlay"]


def test_a_bus_call_starts_the_stopped_daemon_which_adopts(ct: Container) -> None:
    ct.run("systemctl", "stop", "overlayd.service")
    assert ct.run("cat", "/run/overlayd/mnt/demo/three.txt").stdout == "three\n"
    assert '"demo"' in busctl(ct, "ListOverlays").stdout  # D-Bus activation
    assert ct.run("systemctl", "is-active", "overlayd.service").stdout.strip() == "active"


def test_busy_discard_names_the_holder_under_the_sandbox(ct: Container) -> None:
    """The unit's capabilities and filters still let it name another user's process."""
    ct.run("systemd-run", "--uid=65534", "--unit=holder", "-p",
           "WorkingDirectory=/run/overlayd/mnt/demo", "sleep", "300")
    try:
        r = busctl(ct, "Discard", "sa{sv}", "demo", "0", check=False)
        assert r.returncode != 0 and "sleep" in r.stderr and "pid" in r.stderr.lower(), r.stderr
    finally:
        ct.run("systemctl", "stop", "holder.service")


def test_stop_with_on_stop_discard_throws_the_writes_away(ct: Container) -> None:
    ct.run("systemctl", "stop", "overlayd@demo.service")
    assert image_file(ct, f"{IMAGES}/demo.img", "/three.txt") is None
    # and says what it threw away, at notice
    (lost,) = journal(ct, f"MESSAGE_ID={MESSAGE_IDS[Event.DISCARDED]}", "OVERLAYD_NAME=demo")
    assert lost["PRIORITY"] == "5" and int(lost["OVERLAYD_ENTRIES"]) >= 1
    assert int(lost["OVERLAYD_ADDED"]) >= 1 and int(lost["OVERLAYD_BYTES"]) > 0
    assert "throwing away its writes" in lost["MESSAGE"]
    assert '"demo"' not in busctl(ct, "ListOverlays").stdout
    assert ct.run("findmnt", "/run/overlayd/mnt/demo", check=False).returncode != 0


def test_stop_with_on_stop_commit_keeps_the_writes(ct: Container) -> None:
    ct.run("systemctl", "start", "overlayd@keep.service")
    ct.run("sh", "-c", "echo kept > /run/overlayd/mnt/keep/kept.txt")
    ct.run("systemctl", "stop", "overlayd@keep.service")
    assert image_file(ct, f"{IMAGES}/keep.img", "/kept.txt") == "kept\n"
    assert '"keep"' not in busctl(ct, "ListOverlays").stdout


def test_start_of_a_missing_or_bad_file_fails_clearly(ct: Container) -> None:
    with pytest.raises(CommandFailed):
        ct.run("systemctl", "start", "overlayd@nofile.service")
    log = ct.run("journalctl", "--no-pager", "-o", "cat", "-u", "overlayd@nofile.service").stdout
    assert "No file 'nofile.overlay' defines overlay 'nofile'" in log


def test_journal_has_the_structured_events(ct: Container) -> None:
    events = journal(ct, "OVERLAYD_NAME=demo", "SYSLOG_IDENTIFIER=overlayd")
    kinds = [e["OVERLAYD_EVENT"] for e in events]
    assert kinds.count("created") == 1 and kinds.count("committed") == 2
    assert "discarded" in kinds and "recovered" in kinds
    for e in events:
        assert e["MESSAGE_ID"] == MESSAGE_IDS[Event(e["OVERLAYD_EVENT"])]
        assert e["OVERLAYD_IMAGE"] == f"{IMAGES}/demo.img"
        assert e["OVERLAYD_MOUNTPOINT"] == "/run/overlayd/mnt/demo"
        assert e["_SYSTEMD_UNIT"] == "overlayd.service"
        assert "EXCEPTION_TEXT" not in e
    commit = next(e for e in events if e["OVERLAYD_EVENT"] == "committed")
    assert commit["OVERLAYD_UID"] == "0" and int(commit["OVERLAYD_ENTRIES"]) >= 1
    assert int(commit["OVERLAYD_BYTES"]) >= 4 and float(commit["OVERLAYD_SECONDS"]) > 0
    ct.run("journalctl", "--update-catalog")
    explained = ct.run("journalctl", "--no-pager", "-x", "-o", "short",
                       f"MESSAGE_ID={MESSAGE_IDS[Event.DISCARDED]}").stdout
    assert "Overlay demo discarded" in explained


def test_a_running_commit_holds_a_logind_inhibitor(ct: Container) -> None:
    """While a job runs, a poweroff waits: systemd-inhibit --list shows overlayd's lock
    (the commit is held at a known file by an OpenGate, from the host), and after the job
    it is gone."""
    ct.run("systemd-inhibit", "--list")  # logind is up (D-Bus activation if it was not)
    busctl(ct, "Create", "sa{sv}", "held", "1", "image", "s", f"{IMAGES}/demo.img")
    for name in ("a", "m"):
        ct.run("sh", "-c", f"head -c 1048576 /dev/zero > /run/overlayd/mnt/held/{name}")
    with OpenGate(ct.root / "run/overlayd/held/rw/upper/m") as gate:
        job = busctl(ct, "StartCommit", "sa{sv}", "held", "0").stdout.split('"')[1]
        gate.wait()
        for _ in range(100):  # the lock is asked for beside the commit, not before it
            listed = ct.run("systemd-inhibit", "--list", "--no-pager").stdout
            line = next((ln for ln in listed.splitlines() if "overlayd" in ln), "")
            if line:
                break
            time.sleep(0.05)
        assert "shutdown:sleep" in line and "block" in line, listed
        assert "Committing overlay 'held'" in line, listed
    for _ in range(600):
        if ct.run("busctl", "--system", "get-property", MANAGER[0], job,
                  "org.overlayd.Overlayd1.Job", "Progress", check=False).returncode != 0:
            break
        time.sleep(0.05)
    assert image_file(ct, f"{IMAGES}/demo.img", "/m") is not None
    listed = ct.run("systemd-inhibit", "--list", "--no-pager").stdout
    assert "overlayd" not in listed, listed


def test_filling_an_overlay_logs_each_usage_rise(ct: Container) -> None:
    busctl(ct, "Create", "sa{sv}", "full", "2", "image", "s", f"{IMAGES}/demo.img",
           "size", "t", str(8 << 20))
    path = "/org/overlayd/Overlayd1/overlay/full"
    # 87.5 %, then 95.3 %, then until ENOSPC; each time until the watch (every 2 s) saw it
    for name, kib, level in (("x", 7168, "high"), ("y", 640, "critical"), ("z", 8192, "full")):
        ct.run("sh", "-c", f"dd if=/dev/zero of=/run/overlayd/mnt/full/{name} bs=64K "
               f"count={kib // 64} status=none", check=level != "full")
        for _ in range(200):
            out = ct.run("busctl", "--system", "get-property", MANAGER[0], path,
                         "org.overlayd.Overlayd1.Overlay", "UpperUsage").stdout
            if level in out:
                break
            time.sleep(0.1)
        assert level in out
    entries = journal(ct, f"MESSAGE_ID={MESSAGE_IDS[Event.USAGE]}", "OVERLAYD_NAME=full")
    assert [e["OVERLAYD_USAGE"] for e in entries] == ["high", "critical", "full"], entries
    assert [e["PRIORITY"] for e in entries] == ["5", "4", "4"]
    assert entries[2]["OVERLAYD_UPPER_USED"] == entries[2]["OVERLAYD_UPPER_SIZE"]
    ct.run("journalctl", "--update-catalog")
    explained = ct.run("journalctl", "--no-pager", "-x", "-o", "short",
                       f"MESSAGE_ID={MESSAGE_IDS[Event.USAGE]}").stdout
    assert "is running out of RAM" in explained
    busctl(ct, "Discard", "sa{sv}", "full", "0")
    busctl(ct, "Discard", "sa{sv}", "held", "0")


def test_fuse_engine_server_in_its_own_scope_outlives_a_restart(ct: Container) -> None:
    """engine = "fuse" under systemd: fuse-overlayfs runs in overlayd-fuse-NAME.scope (not
    in overlayd.service's cgroup, so a restart of the daemon leaves it), opens /dev/fuse
    under the unit's DevicePolicy, is adopted, and commits."""
    ct.run("overlayctl", "create", "fz", f"{IMAGES}/fuse.img", "--engine", "fuse")
    assert ct.run("systemctl", "is-active", "overlayd-fuse-fz.scope").stdout.strip() == "active"
    src = ct.run("findmnt", "-n", "-o", "SOURCE,FSTYPE", "/run/overlayd/mnt/fz").stdout
    assert src.split() == ["overlayd-fz", "fuse.overlayd-fz"]
    ct.run("sh", "-c", "echo through-fuse > /run/overlayd/mnt/fz/f.txt")
    pids = ct.run("systemctl", "show", "-p", "ControlGroup", "overlayd-fuse-fz.scope").stdout
    ct.run("systemctl", "restart", "overlayd.service")
    assert ct.run("systemctl", "is-active", "overlayd-fuse-fz.scope").stdout.strip() == "active"
    assert ct.run("systemctl", "show", "-p", "ControlGroup",
                  "overlayd-fuse-fz.scope").stdout == pids
    assert ct.run("cat", "/run/overlayd/mnt/fz/f.txt").stdout == "through-fuse\n"
    status = json.loads(ct.run("overlayctl", "--json", "status", "fz").stdout)
    assert status["State"] == "active" and status["Engine"] == "fuse"
    ct.run("overlayctl", "commit", "fz")
    assert image_file(ct, f"{IMAGES}/fuse.img", "/f.txt") == "through-fuse\n"
    ct.run("overlayctl", "discard", "fz")
    for _ in range(100):  # the server ends when its mount goes; the scope with it
        if ct.run("systemctl", "is-active", "overlayd-fuse-fz.scope",
                  check=False).stdout.strip() != "active":
            break
        time.sleep(0.05)
    assert ct.run("systemctl", "is-active", "overlayd-fuse-fz.scope",
                  check=False).stdout.strip() != "active"
    # A directory image and the caller's own mount point: both reach the server as
    # /proc/self/fd/N through systemd-run.
    ct.run("mkdir", "-p", "/srv/fuse-dir", "/srv/fuse-here")
    ct.run("sh", "-c", "echo in-dir > /srv/fuse-dir/d.txt")
    ct.run("overlayctl", "create", "fd", "/srv/fuse-dir", "--engine", "fuse",
           "--mountpoint", "/srv/fuse-here")
    assert ct.run("cat", "/srv/fuse-here/d.txt").stdout == "in-dir\n"
    ct.run("overlayctl", "discard", "fd")


def test_security_score(ct: Container) -> None:
    """Not a gate: the figure goes in the README and the notes."""
    out = ct.run("systemd-analyze", "security", "--no-pager", "overlayd.service").stdout
    print(out.splitlines()[-1])
    assert "Overall exposure level" in out
