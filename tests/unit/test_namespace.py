"""Which mounts polkitd's namespace drops (overlayd.host.namespace.overlayd_mounts)."""

from __future__ import annotations

from pathlib import Path

from overlayd.host.namespace import overlayd_mounts
from overlayd.mountinfo import MountInfo

RUN = Path("/run/overlayd")


def mount(n: int, target: str, source: str, fstype: str = "tmpfs") -> MountInfo:
    return MountInfo(mount_id=n, parent_id=1, device="0:1", root="/", target=target,
                     options=("rw",), fstype=fstype, source=source, super_options=("rw",))


def picked(mounts: list[MountInfo], runtime_dirs: list[Path] | None = None) -> list[str]:
    return [m.target for m in overlayd_mounts(mounts, runtime_dirs or [RUN])]


def test_own_tmpfs_overlay_and_image_mounts_latest_first() -> None:
    table = [mount(1, "/", "/dev/vda1", "ext4"),
             mount(2, "/run/overlayd/a/lower", "/dev/loop3", "ext4"),
             mount(3, "/run/overlayd/a/rw", "overlayd-a"),
             mount(4, "/run/overlayd/mnt/a", "overlayd-a", "overlay")]
    assert picked(table) == ["/run/overlayd/mnt/a", "/run/overlayd/a/rw",
                             "/run/overlayd/a/lower"]


def test_never_a_foreign_loop_mount() -> None:
    table = [mount(1, "/srv/data", "/dev/loop0", "ext4"),
             mount(2, "/media/x/lower", "/dev/loop1", "ext4"),  # not in a runtime dir
             mount(3, "/run/overlayd/a/lower/sub", "/dev/loop2", "ext4"),
             mount(4, "/run/overlayd/lower", "/dev/loop4", "ext4"),
             mount(5, "/run/overlayd/a/lower2", "/dev/loop5", "ext4")]
    assert picked(table) == []


def test_the_prefix_alone_is_not_enough_for_other_file_systems() -> None:
    assert picked([mount(1, "/mnt/f", "overlayd-fuse", "fuse.sshfs")]) == []


def test_the_image_mounts_of_another_daemon_found_from_its_tmpfs() -> None:
    table = [mount(1, "/var/other/x/lower", "/dev/loop9", "squashfs"),
             mount(2, "/var/other/x/rw", "overlayd-x"),
             mount(3, "/var/other/y/lower", "/dev/loop8", "ext4"),  # same runtime dir
             mount(4, "/var/third/z/rw", "overlayd-notz"),  # name and source disagree
             mount(5, "/var/third/z/lower", "/dev/loop7", "ext4")]
    assert picked(table) == ["/var/third/z/rw", "/var/other/y/lower", "/var/other/x/rw",
                             "/var/other/x/lower"]


def test_the_runtime_dir_passed_in() -> None:
    table = [mount(1, "/tmp/t/run/p/lower", "/dev/loop1", "ext4"),
             mount(2, "/run/overlayd/q/lower", "/dev/loop2", "ext4")]
    assert picked(table, [Path("/tmp/t/run")]) == ["/tmp/t/run/p/lower"]


def test_the_shared_image_mounts() -> None:
    """RUNTIME_DIR/.lowers/DEV-INO: one image mount for all the overlays of an image."""
    table = [mount(1, "/run/overlayd/.lowers/2049-12", "/dev/loop3", "ext4"),
             mount(2, "/run/overlayd/a/rw", "overlayd-a"),
             mount(3, "/var/other/.lowers/2049-13", "/dev/loop4", "ext4"),
             mount(4, "/var/other/x/rw", "overlayd-x"),
             mount(5, "/srv/.lowers/2049-14", "/dev/loop5", "ext4"),  # no runtime dir
             mount(6, "/run/overlayd/.lowers/x", "tmpfs-of-someone", "tmpfs")]
    assert picked(table) == ["/var/other/x/rw", "/var/other/.lowers/2049-13",
                             "/run/overlayd/a/rw", "/run/overlayd/.lowers/2049-12"]


def test_never_the_root_file_system_on_an_overlay() -> None:
    """The initramfs' root overlay (sources overlayd-root): a lazy detach of / would take
    every mount below it, polkitd's binds and /proc included."""
    table = [mount(1, "/", "overlayd-root", "overlay"),
             mount(2, "/run/overlayd-root/lower", "/dev/vda1", "ext4"),
             mount(3, "/run/initramfs/overlayd-root", "overlayd-root"),
             mount(4, "/run/overlayd/a/lower", "/dev/loop3", "ext4"),
             mount(5, "/run/overlayd/a/rw", "overlayd-a")]
    assert picked(table) == ["/run/overlayd/a/rw", "/run/overlayd/a/lower"]


def test_zram_uppers_of_ours_and_of_another_daemon() -> None:
    """A zram upper held in polkitd's namespace would keep its device busy after Discard
    (issue 16): ours, and another daemon's found from its overlay's upperdir."""
    overlay = MountInfo(mount_id=4, parent_id=1, device="0:9", root="/",
                        target="/srv/v", options=("rw",), fstype="overlay",
                        source="overlayd-w",
                        super_options=("rw", "lowerdir=/x", "upperdir=/var/o/w/rw/upper",
                                       "workdir=/var/o/w/rw/work"))
    table = [mount(1, "/run/overlayd/z/rw", "/dev/zram3", "ext4"),
             mount(2, "/var/o/w/rw", "/dev/zram4", "ext4"),
             mount(3, "/var/o/w/lower", "/dev/loop4", "ext4"),
             overlay,
             mount(5, "/run/overlayd/y/rw", "/dev/sdb1", "ext4"),  # not a zram device
             mount(6, "/srv/zram/rw", "/dev/zram0", "ext4")]  # not in a runtime dir
    assert picked(table) == ["/srv/v", "/var/o/w/lower", "/var/o/w/rw",
                             "/run/overlayd/z/rw"]
