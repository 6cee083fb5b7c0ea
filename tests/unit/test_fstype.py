"""Superblock detection (overlayd.fstype) on hand-built byte buffers."""

from __future__ import annotations

import struct

import pytest

from overlayd.fstype import PROBE_BYTES, REFUSAL, detect_fstype
from overlayd.model import SUPPORTED_FSTYPES

EXT_SB = 1024
EXT_MAGIC = (EXT_SB + 0x38, b"\x53\xef")
MBR_SIG = (510, b"\x55\xaa")


def image(*parts: tuple[int, bytes]) -> bytes:
    """PROBE_BYTES of zeros with each (offset, bytes) written in."""
    buf = bytearray(PROBE_BYTES)
    for off, data in parts:
        buf[off : off + len(data)] = data
    return bytes(buf)


def ext(compat: int = 0, incompat: int = 0, ro_compat: int = 0) -> bytes:
    return image(EXT_MAGIC, (EXT_SB + 0x5C, struct.pack("<III", compat, incompat, ro_compat)))


SAMPLES: dict[str, bytes] = {
    "ext2": ext(),
    "ext3": ext(compat=0x4),
    "ext4": ext(compat=0x4, incompat=0x40),
    "squashfs": image((0, b"hsqs")),
    "erofs": image((1024, struct.pack("<I", 0xE0F5E1E2))),
    "xfs": image((0, b"XFSB")),
    "btrfs": image((0x10040, b"_BHRfS_M")),
    "iso9660": image((0x8001, b"CD001")),
    "crypto_LUKS": image((0, b"LUKS\xba\xbe")),
    "exfat": image((3, b"EXFAT   "), MBR_SIG),
    "ntfs": image((3, b"NTFS    "), MBR_SIG),
    "vfat": image((82, b"FAT32   "), MBR_SIG),
    "partition-table": image((512, b"EFI PART")),
    "swap": image((4086, b"SWAPSPACE2")),
}


@pytest.mark.parametrize(("expected", "buf"), SAMPLES.items(), ids=list(SAMPLES))
def test_detect(expected: str, buf: bytes) -> None:
    assert detect_fstype(buf) == expected


@pytest.mark.parametrize(("expected", "buf"), SAMPLES.items(), ids=list(SAMPLES))
def test_detect_accepts_bytearray(expected: str, buf: bytes) -> None:
    assert detect_fstype(bytearray(buf)) == expected


@pytest.mark.parametrize(("compat", "incompat", "ro_compat", "expected"), [
    (0, 0, 0, "ext2"),
    (0, 0x2, 0x1 | 0x2, "ext2"),          # filetype, sparse_super, large_file
    (0x4, 0, 0, "ext3"),                   # has_journal
    (0x4, 0x2 | 0x4, 0x1 | 0x2, "ext3"),   # filetype, recover
    (0x4 | 0x20, 0x2 | 0x10, 0x4, "ext3"), # dir_index, meta_bg, btree_dir
    (0x4, 0x40, 0, "ext4"),                # extents
    (0, 0x40, 0, "ext4"),                  # extents without a journal is still ext4
    (0x4, 0x80, 0, "ext4"),                # 64bit
    (0x4, 0x200, 0, "ext4"),               # flex_bg
    (0x4, 0, 0x8, "ext4"),                 # huge_file
    (0x4, 0, 0x10, "ext4"),                # gdt_csum
    (0x4, 0, 0x400, "ext4"),               # metadata_csum
])
def test_ext_flavours(compat: int, incompat: int, ro_compat: int, expected: str) -> None:
    assert detect_fstype(ext(compat, incompat, ro_compat)) == expected


@pytest.mark.parametrize(("off", "label", "expected"), [
    (54, b"FAT12   ", "vfat"),
    (54, b"FAT16   ", "vfat"),
    (82, b"FAT32   ", "vfat"),
    (82, b"FAT16   ", None),
    (54, b"FAT32   ", None),
])
def test_fat_variants(off: int, label: bytes, expected: str | None) -> None:
    assert detect_fstype(image((off, label), MBR_SIG)) == expected


def test_fat_label_without_boot_signature_is_nothing() -> None:
    assert detect_fstype(image((82, b"FAT32   "))) is None


def test_mbr_partition_table() -> None:
    assert detect_fstype(image(MBR_SIG, (446 + 4, b"\x83"))) == "partition-table"


def test_mbr_signature_without_partitions_is_nothing() -> None:
    assert detect_fstype(image(MBR_SIG)) is None


@pytest.mark.parametrize("page", [4096, 8192, 16384, 65536])
def test_swap_on_every_page_size(page: int) -> None:
    assert detect_fstype(image((page - 10, b"SWAPSPACE2"))) == "swap"


def test_hybrid_iso_is_iso9660_not_partition_table() -> None:
    """isohybrid images carry an MBR too; the ISO wins."""
    buf = image((0x8001, b"CD001"), MBR_SIG, (446 + 4, b"\x17"))
    assert detect_fstype(buf) == "iso9660"


def test_all_zeros_is_nothing() -> None:
    assert detect_fstype(bytes(PROBE_BYTES)) is None


@pytest.mark.parametrize("n", [0, 1, 4, 100, 446, 450, 511, 512, 520, 1024, 1028,
                               EXT_SB + 0x3A, EXT_SB + 0x67, 4095, 0x8005, 0x10047])
def test_short_zero_buffer_is_nothing(n: int) -> None:
    assert detect_fstype(bytes(n)) is None


@pytest.mark.parametrize("tag", list(SAMPLES))
@pytest.mark.parametrize("cut", [0, 3, 8, 511, 512, 1026, EXT_SB + 0x3A, EXT_SB + 0x67, 4090,
                                 0x8003, 0x10044])
def test_truncated_buffers_never_raise(tag: str, cut: int) -> None:
    result = detect_fstype(SAMPLES[tag][:cut])
    assert result is None or isinstance(result, str)


def test_ext_magic_in_a_too_short_buffer_is_nothing() -> None:
    assert detect_fstype(SAMPLES["ext4"][: EXT_SB + 0x60]) is None


def test_every_refusal_tag_has_a_message() -> None:
    supported = set(SUPPORTED_FSTYPES)
    refused = {tag for tag, buf in SAMPLES.items() if detect_fstype(buf) not in supported}
    assert refused == set(REFUSAL)
    for tag, text in REFUSAL.items():
        assert text and text[0].islower(), tag  # continues "The image '...' ..."
        assert not text.endswith(".")


def test_refusals_and_supported_are_disjoint() -> None:
    assert not set(REFUSAL) & set(SUPPORTED_FSTYPES)


def test_every_supported_fstype_is_detected() -> None:
    assert {detect_fstype(SAMPLES[t]) for t in SUPPORTED_FSTYPES} == set(SUPPORTED_FSTYPES)
