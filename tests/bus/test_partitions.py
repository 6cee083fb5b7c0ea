"""Partitioned images over the bus (issue 15): a Raspberry Pi-style image (an MBR written by
sfdisk, a FAT boot partition made by mkfs.vfat, an ext4 root) gets an overlay of partition
2, written, committed (the change lands in partition 2 only, read back with debugfs) and
discarded; a GPT image by label; overlays of two partitions of one image at once; and
every bad input answered with a clear error."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers, partimg
from tests.bus.conftest import Daemon

MiB = 1 << 20
P1 = (4 * MiB, 16 * MiB)  # (start, size) of the Pi image's FAT boot partition
P2 = (20 * MiB, 40 * MiB)  # and of its ext4 root


def _write_at(img: Path, offset: int, part: Path) -> None:
    with open(img, "r+b") as out, open(part, "rb") as src:
        out.seek(offset)
        while chunk := src.read(4 * MiB):
            out.write(chunk)


def _partition_file(img: Path, start: int, size: int, out: Path) -> Path:
    with open(img, "rb") as f:
        f.seek(start)
        out.write_bytes(f.read(size))
    return out


def _ext4(path: Path, size: int, tree: Path) -> Path:
    helpers.sh("truncate", "-s", str(size), path)
    helpers.sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", tree, path)
    return path


def _hash_outside(img: Path, start: int, size: int) -> str:
    """The image's bytes but those of [START, START+SIZE): what a commit must not touch."""
    h = hashlib.sha256()
    with open(img, "rb") as f:
        h.update(f.read(start))
        f.seek(start + size)
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def pi_image(root: Path) -> Path:
    """64 MiB: sfdisk's MBR, partition 1 FAT32 (type c) with config.txt, partition 2 ext4
    (type 83) holding /etc/hostname."""
    img = root / "pi.img"
    helpers.sh("truncate", "-s", str(64 * MiB), img)
    table = (f"label: dos\n"
             f"start={P1[0] // 512}, size={P1[1] // 512}, type=c\n"
             f"start={P2[0] // 512}, size={P2[1] // 512}, type=83\n")
    subprocess.run(["sfdisk", "--quiet", str(img)], input=table, text=True, check=True,
                   capture_output=True)
    boot = root / "boot.fat"
    helpers.sh("truncate", "-s", str(P1[1]), boot)
    helpers.sh("mkfs.vfat", "-F", "32", "-n", "BOOT", boot)
    _write_at(img, P1[0], boot)
    tree = root / "rootfs"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("raspberrypi\n")
    _write_at(img, P2[0], _ext4(root / "root.ext4", P2[1], tree))
    boot.unlink()
    (root / "root.ext4").unlink()
    helpers.traversable(root)
    img.chmod(0o644)
    return img


def _gpt_image(root: Path) -> Path:
    """48 MiB, GPT: 1 'data' (ext4, /a.txt), 2 'rootfs' (ext4, /etc/hostname)."""
    img = root / "disk-gpt.img"
    size = 48 * MiB
    helpers.sh("truncate", "-s", str(size), img)
    partimg.write_into(str(img), partimg.gpt(size, [("data", 2048, 16 * 2048),
                                                     ("rootfs", 18 * 2048, 24 * 2048)]))
    for n, (start, count, name, content) in enumerate(
            [(2048, 16 * 2048, "a.txt", "data\n"), (18 * 2048, 24 * 2048, "etc/hostname",
                                                      "gpt\n")]):
        tree = root / f"tree{n}"
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(content)
        part = _ext4(root / f"part{n}.ext4", count * 512, tree)
        _write_at(img, start * 512, part)
        part.unlink()
    helpers.traversable(root)
    img.chmod(0o644)
    return img


@pytest.fixture
def gpt_image(root: Path) -> Path:
    return _gpt_image(root)


def _debugfs_cat(img: Path, start: int, size: int, path: str, root: Path) -> str:
    part = _partition_file(img, start, size, root / "readback.ext4")
    try:
        return helpers.sh("debugfs", "-R", f"cat {path}", part).stdout
    finally:
        part.unlink()


def _lower_mounts(d: Daemon) -> list[str]:
    shared = d.runtime / ".lowers"
    return sorted(os.listdir(shared)) if shared.is_dir() else []


@pytest.fixture
def no_leak(clean: Daemon, root: Path) -> Iterator[Daemon]:
    """The session daemon; after the test no loop device of the test's images is left
    (only ours are looked at: other tests of the machine attach their own)."""
    yield clean
    clean.discard_all()

    def ours() -> list[str]:
        return [d for d, f in helpers.attached_loops().items() if f.startswith(str(root))]
    helpers.wait_for(lambda: not ours(), 10, "the loop devices to be detached")


def test_pi_image_partition_2_end_to_end(no_leak: Daemon, pi_image: Path, root: Path) -> None:
    d = no_leak
    outside = _hash_outside(pi_image, *P2)
    r = d.ctl("create", "pi", str(pi_image), "--partition", "2")
    assert r.returncode == 0, r.stderr
    path = d.call("GetOverlay", "s", "pi").stdout.split('"')[1]
    assert d.prop(path, "Partition") == "2"
    assert d.prop(path, "PartitionOffset") == str(P2[0])
    assert d.prop(path, "PartitionSize") == str(P2[1])
    assert d.prop(path, "FsType") == "ext4"
    status = d.ctl("status", "pi")
    assert "Partition: 2 (40M at byte 20971520)" in status.stdout, status.stdout
    js = d.ctl("status", "pi", "--json")
    assert '"Partition": "2"' in js.stdout
    loop = d.prop(path, "LoopDevice")
    name = os.path.basename(loop)
    assert Path(f"/sys/block/{name}/loop/offset").read_text().strip() == str(P2[0])
    assert Path(f"/sys/block/{name}/loop/sizelimit").read_text().strip() == str(P2[1])
    assert Path(f"/sys/block/{name}/ro").read_text().strip() == "1"

    mp = d.runtime / "mnt" / "pi"
    assert (mp / "etc/hostname").read_text() == "raspberrypi\n"
    (mp / "etc/hostname").write_text("overlaypi\n")
    (mp / "new.txt").write_text("committed\n")
    r = d.call("Commit", "sa{sv}", "pi", "0")
    assert r.returncode == 0, r.stderr
    assert d.prop(path, "LastError") == ""
    assert _debugfs_cat(pi_image, *P2, "/new.txt", root) == "committed\n"
    assert _debugfs_cat(pi_image, *P2, "/etc/hostname", root) == "overlaypi\n"
    assert _hash_outside(pi_image, *P2) == outside  # partition 1, the table: not a byte
    part = _partition_file(pi_image, *P2, root / "check.ext4")
    helpers.sh("e2fsck", "-fn", part)
    part.unlink()
    # The overlay is back over the committed partition, on a read-only loop device of it.
    assert (mp / "new.txt").read_text() == "committed\n"
    loop = d.prop(path, "LoopDevice")
    assert Path(f"/sys/block/{os.path.basename(loop)}/loop/offset").read_text().strip() \
        == str(P2[0])
    (mp / "gone.txt").write_text("x\n")
    r = d.ctl("discard", "pi")
    assert r.returncode == 0, r.stderr
    assert "gone.txt" not in helpers.sh("debugfs", "-R", "ls /",
                                        _partition_file(pi_image, *P2, root / "c.ext4")).stdout
    assert _hash_outside(pi_image, *P2) == outside
    assert _lower_mounts(d) == []


def test_gpt_partition_by_label(no_leak: Daemon, gpt_image: Path) -> None:
    d = no_leak
    path = d.create("g", gpt_image, "partition", "s", "rootfs")
    assert d.prop(path, "Partition") == "rootfs"
    assert d.prop(path, "PartitionOffset") == str(18 * MiB)
    assert (d.runtime / "mnt/g/etc/hostname").read_text() == "gpt\n"
    assert not (d.runtime / "mnt/g/a.txt").exists()


def test_two_partitions_of_one_image_at_once(no_leak: Daemon, gpt_image: Path,
                                             root: Path) -> None:
    """Different partitions are different lowers (two image mounts); the same partition is
    shared. Committing partition 2 while partition 1 is read is allowed (no byte of it
    changes); committing while another overlay reads partition 2 is ImageInUse."""
    d = no_leak
    d.create("one", gpt_image, "partition", "u", "1")
    d.create("two", gpt_image, "partition", "u", "2")
    assert (d.runtime / "mnt/one/a.txt").read_text() == "data\n"
    assert (d.runtime / "mnt/two/etc/hostname").read_text() == "gpt\n"
    mounts = _lower_mounts(d)
    assert len(mounts) == 2 and any(m.endswith(f"-p{18 * MiB}") for m in mounts), mounts

    p1 = (MiB, 16 * MiB)
    before = _hash_outside(gpt_image, 18 * MiB, 24 * MiB)
    (d.runtime / "mnt/two/two.txt").write_text("two\n")
    r = d.call("Commit", "sa{sv}", "two", "0")
    assert r.returncode == 0, r.stderr
    assert _debugfs_cat(gpt_image, 18 * MiB, 24 * MiB, "/two.txt", root) == "two\n"
    assert _hash_outside(gpt_image, 18 * MiB, 24 * MiB) == before
    assert (d.runtime / "mnt/one/a.txt").read_text() == "data\n"

    d.create("two-again", gpt_image, "partition", "s", "rootfs")
    assert len(_lower_mounts(d)) == 2  # shared with "two"
    (d.runtime / "mnt/two/more.txt").write_text("more\n")
    r = d.call("Commit", "sa{sv}", "two", "0")
    assert r.returncode != 0 and "(partition 2) is read by the overlays 'two-again'" \
        in r.stderr, r.stderr
    assert "'one'" not in r.stderr
    # Discarding one partition's overlay leaves the other's mount up.
    assert d.call("Discard", "sa{sv}", "one", "0").returncode == 0
    assert len(_lower_mounts(d)) == 1
    assert (d.runtime / "mnt/two/etc/hostname").read_text() == "gpt\n"
    assert _debugfs_cat(gpt_image, *p1, "/a.txt", root) == "data\n"


@pytest.mark.parametrize("extra, words", [
    (("partition", "u", "3"), "has no partition 3 in its MBR table (it has 1, 2)"),
    (("partition", "s", "rootfs"), "whose partitions have no labels"),
    (("partition", "u", "0"), "partition numbers start at 1"),
    (("partition", "u", "4294967295"), "partition numbers go up to 65535"),
    (("partition", "s", ""), "a GPT partition label is 1 to 36 characters"),
    (("partition", "u", "1"), "Partition 1 of the image"),  # FAT: case-insensitive, refused
    ((), "holds a partition table, not a file system; choose one of its partitions with "
         "'partition'"),
])
def test_bad_partitions_of_the_pi_image(no_leak: Daemon, pi_image: Path,
                                        extra: tuple[str, ...], words: str) -> None:
    n = 1 + len(extra) // 3
    r = no_leak.call("Create", "sa{sv}", "bad", str(n), "image", "s", str(pi_image), *extra)
    assert r.returncode != 0
    assert words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and str(no_leak.runtime) not in r.stderr
    assert _lower_mounts(no_leak) == []
    assert not (no_leak.runtime / "bad").exists()


def test_bad_partition_inputs(no_leak: Daemon, root: Path, bus_image: Path,
                              gpt_image: Path) -> None:
    d = no_leak

    def refused(image: Path | str, *extra: str) -> str:
        n = 1 + len(extra) // 3
        r = d.call("Create", "sa{sv}", "bad", str(n), "image", "s", str(image), *extra)
        assert r.returncode != 0
        assert "Traceback" not in r.stderr and str(d.runtime) not in r.stderr
        assert not (d.runtime / "bad").exists()
        return r.stderr

    assert "has no partition table" in refused(bus_image, "partition", "u", "1")
    assert "holds ext4 itself: leave out 'partition'" in refused(bus_image, "partition", "u",
                                                                 "1")
    assert "no partition 'nope' in its GPT table (it has 1 'data', 2 'rootfs')" in \
        refused(gpt_image, "partition", "s", "nope")
    assert "is a directory; it has no partitions" in refused(root, "partition", "u", "1")
    assert "must be of type 'u'" in refused(gpt_image, "partition", "b", "true")
    short = root / "short.img"
    with open(gpt_image, "rb") as src, open(short, "wb") as dst:
        dst.write(src.read(30 * MiB))  # partition 2 ends at 42 MiB
    assert "ends at byte" in refused(short, "partition", "u", "2")
    # the GPT's header checksum is checked
    broken = root / "broken.img"
    data = bytearray(gpt_image.read_bytes()[:MiB * 48])
    data[512 + 40] ^= 1
    broken.write_bytes(bytes(data))
    assert "checksum (CRC32) is wrong" in refused(broken, "partition", "u", "1")


def test_block_devices(no_leak: Daemon, pi_image: Path, root: Path) -> None:
    """A whole disk (here a loop device of the Pi image) takes 'partition' (through a loop
    device of that part of it); a partition's own device (/dev/loopNp2) refuses it."""
    d = no_leak
    disk = helpers.sh("losetup", "--find", "--show", "--partscan", "--read-only",
                      pi_image).stdout.strip()
    try:
        name = os.path.basename(disk)
        helpers.sh("partx", "--add", disk)  # this kernel's scan at attach finds none here
        sysfs = Path(f"/sys/block/{name}/{name}p2/dev")
        helpers.wait_for(sysfs.exists, 10, "the partition in sysfs")
        # no udev here to make /dev/loopNp2: a node of our own
        major, minor = map(int, sysfs.read_text().split(":"))
        node = root / "p2"
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
        r = d.call("Create", "sa{sv}", "bad", "2", "image", "s", str(node),
                   "partition", "u", "1")
        assert r.returncode != 0 and "is itself a partition" in r.stderr, r.stderr
        path = d.create("disk", Path(disk), "partition", "u", "2")
        assert d.prop(path, "LoopDevice").startswith("/dev/loop")
        assert d.prop(path, "LoopDevice") != disk
        assert (d.runtime / "mnt/disk/etc/hostname").read_text() == "raspberrypi\n"
        assert d.call("Discard", "sa{sv}", "disk", "0").returncode == 0
    finally:
        d.discard_all()
        helpers.sh("losetup", "-d", disk)


@pytest.mark.parametrize("args, words", [
    (("--partition", "4294967296"), "Invalid 'partition': 4294967296 is too large a partition"),
    (("--partition", "9" * 5000), "is too large a partition number"),
    (("--partition", "70000"), "partition numbers go up to 65535 (got 70000)"),
    (("--size", "99999999999999999999G"), "is more than any machine's memory"),
])
def test_overlayctl_says_numbers_too_large_for_the_bus_in_words(
        no_leak: Daemon, pi_image: Path, args: tuple[str, ...], words: str) -> None:
    """Numbers beyond D-Bus' u and t were dbus-next's 'DBus UINT32 type "u" must be
    between 0 and 4294967295'; 5,000 digits were Python's int() limit."""
    r = no_leak.ctl("create", "bad", str(pi_image), *args)
    assert r.returncode in (64, 65) and words in r.stderr, r.stderr
    assert "DBus" not in r.stderr and "Traceback" not in r.stderr
    assert not (no_leak.runtime / "bad").exists()
