"""The partition table parser (overlayd.partitions) on tables written in Python."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from overlayd.partitions import PartitionError, Table, find, read_table
from tests.partimg import gpt, mbr, to_bytes

MiB = 1 << 20


def reader(data: bytes):  # type: ignore[no-untyped-def]
    return lambda off, n: data[off:off + n]


def table(data: bytes) -> Table:
    return read_table(reader(data), len(data))


def pi_image() -> bytes:
    """A Raspberry Pi-style image: FAT boot (0x0c) at 4 MiB, Linux root (0x83) after it."""
    return to_bytes(32 * MiB, mbr([(0x0C, 8192, 16384), (0x83, 24576, 40960)]))


def test_mbr_primaries() -> None:
    t = table(pi_image())
    assert t.kind == "mbr" and t.sector == 512
    assert [(p.number, p.start, p.size, p.type) for p in t.partitions] == [
        (1, 4 * MiB, 8 * MiB, "0c"), (2, 12 * MiB, 20 * MiB, "83")]
    assert find(t, 2, 32 * MiB).start == 12 * MiB


def test_mbr_logical_partitions() -> None:
    data = to_bytes(32 * MiB, mbr([(0x83, 2048, 2048), (0x0F, 8192, 57344)],
                                  [(0x83, 8193, 4095), (0x83, 16385, 8191)]))
    t = table(data)
    assert [(p.number, p.start // 512, p.size // 512) for p in t.partitions] == [
        (1, 2048, 2048), (5, 8193, 4095), (6, 16385, 8191)]
    assert find(t, 6, len(data)).start == 16385 * 512


def test_mbr_logical_chain_that_loops_is_refused() -> None:
    pieces = mbr([(0x0F, 8192, 8192)], [(0x83, 8193, 100), (0x83, 8300, 100)])
    data = bytearray(to_bytes(8 * MiB, pieces))
    # the second EBR (sector 8299) links to itself (107 sectors into the extended one)
    struct.pack_into("<BxxxBxxxII", data, 8299 * 512 + 446 + 16, 0, 0x05, 107, 101)
    with pytest.raises(PartitionError, match="loops"):
        table(bytes(data))


def test_gpt_numbers_and_labels() -> None:
    size = 64 * MiB
    data = to_bytes(size, gpt(size, [("boot", 2048, 8192), ("rootfs", 10240, 20480)]))
    t = table(data)
    assert t.kind == "gpt"
    assert [(p.number, p.label, p.start) for p in t.partitions] == [
        (1, "boot", MiB), (2, "rootfs", 10240 * 512)]
    assert find(t, "rootfs", size).number == 2
    assert find(t, 1, size).label == "boot"


def test_gpt_with_4k_sectors() -> None:
    size = 64 * MiB
    data = to_bytes(size, gpt(size, [("data", 256, 1024)], sector=4096))
    t = table(data)
    assert t.sector == 4096
    assert (t.partitions[0].start, t.partitions[0].size) == (MiB, 4 * MiB)


def test_gpt_header_crc_is_checked() -> None:
    size = 8 * MiB
    data = bytearray(to_bytes(size, gpt(size, [("a", 2048, 100)])))
    data[512 + 40] ^= 1  # first usable LBA: a change the CRC must catch
    with pytest.raises(PartitionError, match=r"GPT header whose checksum"):
        table(bytes(data))


def test_gpt_entries_crc_is_checked() -> None:
    size = 8 * MiB
    data = bytearray(to_bytes(size, gpt(size, [("a", 2048, 100)])))
    data[1024 + 32] ^= 1  # the first entry's start
    with pytest.raises(PartitionError, match="entries whose checksum"):
        table(bytes(data))


def test_truncated_gpt() -> None:
    size = 8 * MiB
    data = to_bytes(size, gpt(size, [("a", 2048, 100)]))[:2048]
    with pytest.raises(PartitionError, match="truncated"):
        table(data)


def test_partition_past_the_end() -> None:
    data = pi_image()[:20 * MiB]
    t = table(data)
    with pytest.raises(PartitionError, match="ends at byte"):
        find(t, 2, len(data))


def test_not_found_says_what_there_is() -> None:
    t = table(pi_image())
    with pytest.raises(PartitionError, match=r"no partition 3 in its MBR table .it has 1, 2"):
        find(t, 3, 32 * MiB)
    with pytest.raises(PartitionError, match="no labels"):
        find(t, "rootfs", 32 * MiB)
    size = 8 * MiB
    g = table(to_bytes(size, gpt(size, [("a", 2048, 100)])))
    with pytest.raises(PartitionError, match=r"no partition 'b' in its GPT table .it has 1 'a'"):
        find(g, "b", size)


@pytest.mark.parametrize("data", [bytes(4096), b"", b"\0" * 510 + b"\x55\xaa",
                                  b"\xeb\x3c\x90" + b"\x11" * 507 + b"\x55\xaa"])
def test_no_table(data: bytes) -> None:
    with pytest.raises(PartitionError, match="no partition table"):
        table(data)


def test_protective_mbr_without_gpt() -> None:
    data = to_bytes(MiB, mbr([(0xEE, 1, 2047)]))
    with pytest.raises(PartitionError, match="protective MBR"):
        table(data)


def test_absurd_gpt_entry_count() -> None:
    size = 8 * MiB
    data = bytearray(to_bytes(size, gpt(size, [("a", 2048, 100)])))
    struct.pack_into("<I", data, 512 + 80, 1 << 24)
    struct.pack_into("<I", data, 512 + 16, 0)
    import zlib
    struct.pack_into("<I", data, 512 + 16, zlib.crc32(bytes(data[512:512 + 92])) & 0xFFFFFFFF)
    with pytest.raises(PartitionError, match="which no valid table has"):
        table(bytes(data))


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (fdisk) is not installed")
@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_tables_written_by_sfdisk(tmp_path: Path, label: str) -> None:
    """The parser against a real partitioning tool: sfdisk's MBR with logical partitions
    in an extended one, and its GPT with names."""
    img = tmp_path / "disk.img"
    img.write_bytes(b"")
    os.truncate(img, 64 * MiB)
    if label == "dos":
        script = ("label: dos\n"
                  "start=2048, size=8192, type=c\n"
                  "start=10240, size=40960, type=5\n"
                  "start=12288, size=8192, type=83\n"
                  "start=22528, size=16384, type=83\n")
    else:
        script = ("label: gpt\n"
                  "start=2048, size=8192, name=boot\n"
                  "start=10240, size=16384, name=rootfs\n")
    subprocess.run(["sfdisk", "--quiet", "--no-reread", str(img)], input=script, text=True,
                   check=True, capture_output=True)
    data = img.read_bytes()
    t = table(data)
    want = subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True,
                          check=True)
    listed = json.loads(want.stdout)["partitiontable"]["partitions"]
    ours = {p.number: (p.start // 512, p.size // 512, p.label) for p in t.partitions}
    theirs = {int(p["node"].rsplit("img", 1)[1]): (p["start"], p["size"], p.get("name", ""))
              for p in listed if p.get("type") not in ("5", "f")}
    assert ours == theirs
    if label == "dos":
        assert sorted(ours) == [1, 5, 6]
    else:
        assert find(t, "rootfs", len(data)).start == 10240 * 512
