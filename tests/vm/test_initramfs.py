"""The initramfs half of the root on an overlay, without a VM: the guest's real initramfs
(built by its update-initramfs with overlayd's hook) is unpacked, and its own boot script
runs with its own busybox (chroot) in a private mount and pid namespace, against a loop
device of an ext4 image as the root, with a fake /proc/cmdline. Then the exitrd's commit
step (lib.sh's overlayd_root_shutdown with the exitrd's busybox, python3 and overlayd-merge)
writes the upper into the image. What only the VM proves: initramfs-tools' ordering, the
guest kernel, systemd's shutdown (which mounts survive it) and the /shutdown glue."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import make_image
from tests.vm.guest import Guest, run

# Runs inside unshare --mount --propagation private --pid --fork: when it ends, the
# namespace and every mount in it go; the loop device is detached by the trap.
INNER = r"""
set -uo pipefail
W=$1 CMDLINE=$2 X=$W/initramfs
LOOP=$(losetup -f --show "$W/root.img")  # writable: the script itself must set it read-only
trap 'losetup -d "$LOOP"' EXIT
# what initramfs-tools' /init has set up when local-bottom runs
mkdir -p "$X/proc" "$X/sys" "$X/dev" "$X/run" "$X/root"
mount -t proc proc "$X/proc"
echo "console=ttyS0 root=$LOOP ro $CMDLINE" >"$W/cmdline"
mount --bind "$W/cmdline" "$X/proc/cmdline"
mount -t sysfs sys "$X/sys"
mount --rbind /dev "$X/dev"
mount -t tmpfs -o nodev,noexec,nosuid,mode=0755 tmpfs "$X/run"
mkdir -m 0700 "$X/run/initramfs"
mount -o ro "$LOOP" "$X/root"
chroot "$X" /bin/sh -c 'export PATH=/sbin:/usr/sbin:/bin:/usr/bin rootmnt=/root readonly=y quiet=n
    /scripts/local-bottom/overlayd' 2>&1 | sed 's/^/script: /'
echo "rc=${PIPESTATUS[0]}"
echo "root=$(findmnt -rno FSTYPE,SOURCE,OPTIONS "$X/root" | head -1)"
echo "upperfs=$(findmnt -rno FSTYPE,SOURCE,OPTIONS "$X/run/initramfs/overlayd-root")"
echo "devro=$(blockdev --getro "$LOOP")"
echo "runopts=$(findmnt -no OPTIONS "$X/run")"
for f in mode size source lowerdev fstype last-commit-failed; do
    [ -e "$X/run/overlayd-root/$f" ] && echo "state.$f=$(cat "$X/run/overlayd-root/$f")"
done
[ -x "$X/run/initramfs/shutdown" ] && echo exitrd=yes
[ "$(findmnt -no FSTYPE "$X/root" | head -1)" = overlay ] || exit 0
# a user's writes
echo written >"$X/root/etc/new"
rm "$X/root/etc/issue"
mkdir -p "$X/root/var/lib/new/sub" && echo d >"$X/root/var/lib/new/sub/d"
[ -f "$X/run/initramfs/overlayd-root/upper/etc/new" ] && echo in-upper=yes
L=$X/run/overlayd-root/lower
[ -f "$L/etc/issue" ] && [ ! -e "$L/etc/new" ] && echo lower-untouched=yes
echo "sha-before=$(sha256sum "$W/root.img" | cut -d' ' -f1)"
# the exitrd, as /shutdown does it: a copy of the state, the upper bound out, the old root
# unmounted, then the shared shutdown step with the exitrd's own tools
E=$X/run/initramfs
touch "$X/run/overlayd-root/commit"
printf 'mode = "off"\n' >"$X/run/overlayd-root/next-setting"
mkdir -p "$E/state" "$E/layers" "$E/proc" "$E/dev"
cp -a "$X/run/overlayd-root/." "$E/state/"
mount --bind "$X/run/initramfs/overlayd-root" "$E/layers"
umount "$X/root" && umount "$X/run/overlayd-root/lower"
mount -t proc proc "$E/proc"
mount --rbind /dev "$E/dev"
chroot "$E" /usr/bin/busybox sh -c '/usr/bin/busybox --install -s /usr/bin
    export PATH=/usr/bin; . /usr/share/overlayd/root/lib.sh
    overlayd_root_shutdown /state /layers' 2>&1 | sed 's/^/exitrd: /'
echo "shutdown-rc=${PIPESTATUS[0]}"
"""


@pytest.fixture(scope="module")
def initramfs(guest: Guest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guest's initramfs, unpacked by its own unmkinitramfs."""
    out = tmp_path_factory.mktemp("initramfs") / "tree"
    run("chroot", guest.root, "unmkinitramfs", "/" + str(guest.initrd.relative_to(guest.root)),
        "/tmp/overlayd-unpacked")
    (guest.root / "tmp/overlayd-unpacked").rename(out)
    main = out / "main"  # with early microcode the main archive is in main/
    return main if main.is_dir() else out


def boot_script(initramfs: Path, work: Path, cmdline: str, *, setting: str | None = None,
                report: str | None = None) -> dict[str, str]:
    seed = work / "seed"
    (seed / "etc").mkdir(parents=True)
    (seed / "etc/issue").write_text("Debian\n")
    if setting is not None:
        (seed / "etc/overlayd").mkdir()
        (seed / "etc/overlayd/root.overlay").write_text(setting)
    if report is not None:
        (seed / "var/lib/overlayd").mkdir(parents=True)
        (seed / "var/lib/overlayd/root-commit.failed").write_text(report)
    make_image(work / "root.img", seed, size="64M")
    tree = work / "initramfs"
    subprocess.run(["cp", "-a", str(initramfs), str(tree)], check=True)
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                        "bash", "-c", INNER, "inner", str(work), cmdline],
                       text=True, capture_output=True, check=False)
    out: dict[str, str] = {"log": r.stdout + r.stderr}
    for line in r.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and " " not in key:
            out.setdefault(key, value)
    assert r.returncode == 0, out["log"]
    return out


def debugfs_cat(image: Path, path: str) -> str | None:
    r = subprocess.run(["debugfs", "-R", f"stat {path}", str(image)], text=True,
                       capture_output=True, check=False)
    if "File not found" in r.stdout + r.stderr:
        return None
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], text=True,
                          capture_output=True, check=True).stdout


def test_command_line_puts_the_root_on_an_overlay_and_the_exitrd_commits(
        initramfs: Path, tmp_path: Path) -> None:
    out = boot_script(initramfs, tmp_path, "overlayd.root=tmpfs overlayd.root.size=64M")
    log = out["log"]
    assert out["rc"] == "0", log
    fstype, source, options = out["root"].split(" ", 2)
    assert (fstype, source) == ("overlay", "overlayd-root"), log
    assert "lowerdir=/run/overlayd-root/lower" in options
    assert "upperdir=/run/initramfs/overlayd-root/upper" in options
    upper = out["upperfs"].split(" ", 2)
    assert upper[:2] == ["tmpfs", "overlayd-root"] and "size=65536k" in upper[2], log
    assert out["devro"] == "1", "the root's block device was not set read-only"
    assert "noexec" not in out["runopts"].split(","), "the exitrd cannot run from /run"
    assert out["exitrd"] == "yes"
    assert out["state.mode"] == "tmpfs" and out["state.size"] == "64M"
    assert out["state.source"] == "the kernel command line"
    assert out["state.fstype"] == "ext4"
    assert "state.last-commit-failed" not in out
    assert out["in-upper"] == "yes" and out["lower-untouched"] == "yes", log
    # the exitrd's step: commit and the next boot's setting
    assert out["shutdown-rc"] == "0", log
    assert "overlayd-root: commit done" in log
    img = tmp_path / "root.img"
    assert debugfs_cat(img, "/etc/new") == "written\n"
    assert debugfs_cat(img, "/var/lib/new/sub/d") == "d\n"
    assert debugfs_cat(img, "/etc/issue") is None
    assert debugfs_cat(img, "/etc/overlayd/root.overlay") == 'mode = "off"\n'
    assert subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True,
                          check=False).returncode == 0


def test_the_setting_can_come_from_the_root_image(initramfs: Path, tmp_path: Path) -> None:
    out = boot_script(initramfs, tmp_path, "quiet",
                      setting='# protect the root\nmode = "tmpfs"\nsize = "32M"  # of RAM\n',
                      report="2026-01-01: the commit at shutdown stopped at /x\n")
    assert out["root"].startswith("overlay overlayd-root "), out["log"]
    assert out["state.source"] == "/etc/overlayd/root.overlay"
    assert out["state.size"] == "32M"
    assert "size=32768k" in out["upperfs"]
    assert out["state.last-commit-failed"].startswith("2026-01-01: the commit")


def test_off_on_the_command_line_wins_over_the_file(initramfs: Path, tmp_path: Path) -> None:
    out = boot_script(initramfs, tmp_path, "overlayd.root=off", setting='mode = "tmpfs"\n')
    assert out["root"].startswith("ext4 "), out["log"]
    assert out["devro"] == "0"
    assert "state.mode" not in out and "exitrd" not in out


def test_nothing_asked_nothing_done(initramfs: Path, tmp_path: Path) -> None:
    out = boot_script(initramfs, tmp_path, "quiet")
    assert out["root"].startswith("ext4 "), out["log"]
    assert "noexec" in out["runopts"].split(",")


def test_an_unknown_upper_boots_without_an_overlay_and_says_so(initramfs: Path,
                                                               tmp_path: Path) -> None:
    out = boot_script(initramfs, tmp_path, "overlayd.root=zram")
    assert out["root"].startswith("ext4 "), out["log"]
    assert "unknown upper 'zram'" in out["log"]


# The dracut module's two hooks, run the same way: dracut's own initramfs is not built here
# (the guest uses initramfs-tools), so the hooks run with the unpacked initramfs' busybox and
# a stub of the two dracut-lib functions they call; the shutdown hook runs in the exitrd tree
# (its python3 and overlayd-merge) with the old system's /run at /oldsys/run, as dracut's
# /shutdown leaves it once systemd has unmounted the old root and what was under /run.
DRACUT = r"""
set -uo pipefail
W=$1 HOOKS=$2 X=$W/initramfs
LOOP=$(losetup -f --show "$W/root.img")
trap 'losetup -d "$LOOP"' EXIT
mkdir -p "$X/proc" "$X/sys" "$X/dev" "$X/run" "$X/sysroot" "$X/hooks" "$X/usr/share/overlayd/root"
cp "$HOOKS"/*.sh "$X/hooks/"
cp "$X/overlayd-root/lib.sh" "$X/usr/share/overlayd/root/lib.sh"
cat >"$X/lib/dracut-lib.sh" <<'STUB'
getarg() { :; }
need_shutdown() { : >/run/need-shutdown; }
STUB
mount -t proc proc "$X/proc"
echo "root=$LOOP ro overlayd.root=tmpfs overlayd.root.size=32M" >"$W/cmdline"
mount --bind "$W/cmdline" "$X/proc/cmdline"
mount -t sysfs sys "$X/sys"
mount --rbind /dev "$X/dev"
mount -t tmpfs -o mode=0755 tmpfs "$X/run"
mkdir -m 0700 "$X/run/initramfs"
mount -o ro "$LOOP" "$X/sysroot"
chroot "$X" /bin/sh -c 'export PATH=/sbin:/usr/sbin:/bin:/usr/bin NEWROOT=/sysroot
    . /hooks/overlayd-pre-pivot.sh' 2>&1 | sed 's/^/pre-pivot: /'
echo "root=$(findmnt -rno FSTYPE,SOURCE "$X/sysroot" | head -1)"
[ -e "$X/run/need-shutdown" ] && echo need-shutdown=yes
echo dracut >"$X/sysroot/etc/dracut-was-here"
touch "$X/run/overlayd-root/commit"
# dracut's exitrd: here the initramfs-tools hook's tree, which has python3 and overlayd-merge
E=$W/exitrd
cp -a "$X/overlayd-root/exitrd" "$E"
mkdir -p "$E/proc" "$E/dev" "$E/hooks" "$E/oldsys/run/overlayd-root" \
    "$E/oldsys/run/initramfs/overlayd-root"
cp "$HOOKS"/*.sh "$E/hooks/"
umount "$X/sysroot" && umount "$X/run/overlayd-root/lower"
mount --bind "$X/run/overlayd-root" "$E/oldsys/run/overlayd-root"
mount --bind "$X/run/initramfs/overlayd-root" "$E/oldsys/run/initramfs/overlayd-root"
mount -t proc proc "$E/proc"
mount --rbind /dev "$E/dev"
chroot "$E" /usr/bin/busybox sh -c '/usr/bin/busybox --install -s /usr/bin; export PATH=/usr/bin
    . /hooks/overlayd-shutdown.sh; . /hooks/overlayd-shutdown.sh; echo hook-rc=$?' 2>&1 |
    sed 's/^/shutdown: /'
"""


def test_the_dracut_hooks(initramfs: Path, tmp_path: Path) -> None:
    (tmp_path / "seed/etc").mkdir(parents=True)
    (tmp_path / "seed/etc/issue").write_text("Debian\n")
    make_image(tmp_path / "root.img", tmp_path / "seed", size="64M")
    subprocess.run(["cp", "-a", str(initramfs), str(tmp_path / "initramfs")], check=True)
    hooks = Path(__file__).resolve().parents[2] / "packaging/root/dracut/90overlayd"
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                        "bash", "-c", DRACUT, "dracut", str(tmp_path), str(hooks)],
                       text=True, capture_output=True, check=False)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert "root=overlay overlayd-root" in log
    assert "need-shutdown=yes" in log
    assert "shutdown: overlayd-root: commit done" in log
    assert log.count("overlayd-root: writing the changes") == 1, "the hook ran twice"
    assert "shutdown: hook-rc=0" in log
    assert debugfs_cat(tmp_path / "root.img", "/etc/dracut-was-here") == "dracut\n"
    assert subprocess.run(["bash", "-n", str(hooks / "module-setup.sh")]).returncode == 0
