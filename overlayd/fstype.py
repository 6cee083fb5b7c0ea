"""Which file system an image holds, read from its superblock. Pure: bytes in, name out."""

from __future__ import annotations

import struct

PROBE_BYTES = 0x10100  # enough to reach btrfs' superblock at 64 KiB


def _at(buf: bytes, off: int, magic: bytes) -> bool:
    return buf[off : off + len(magic)] == magic


def _ext_flavour(buf: bytes) -> str:
    sb = 1024
    compat, incompat, ro_compat = struct.unpack_from("<III", buf, sb + 0x5C)
    # ext4-only features: extents, 64bit, flex_bg, ... or huge_file/gdt_csum/dir_nlink/extra_isize.
    if incompat & ~0x0016 or ro_compat & ~0x0007:
        return "ext4"
    if compat & 0x0004:  # has_journal
        return "ext3"
    return "ext2"


def detect_fstype(buf: bytes) -> str | None:
    """The type name mount(2) knows, or a descriptive tag for what overlayd refuses, or None."""
    if len(buf) >= 1024 + 0x68 and _at(buf, 1024 + 0x38, b"\x53\xef"):
        return _ext_flavour(buf)
    if _at(buf, 0, b"hsqs"):
        return "squashfs"
    if _at(buf, 1024, struct.pack("<I", 0xE0F5E1E2)):
        return "erofs"
    if _at(buf, 0, b"XFSB"):
        return "xfs"
    if _at(buf, 0x10040, b"_BHRfS_M"):
        return "btrfs"
    if _at(buf, 0x8001, b"CD001"):
        return "iso9660"
    # Recognized only to refuse them with a useful message.
    if _at(buf, 0, b"LUKS\xba\xbe"):
        return "crypto_LUKS"
    if _at(buf, 3, b"EXFAT   "):
        return "exfat"
    if _at(buf, 3, b"NTFS    "):
        return "ntfs"
    if _at(buf, 510, b"\x55\xaa") and (_at(buf, 82, b"FAT32") or _at(buf, 54, b"FAT1")):
        return "vfat"
    if _at(buf, 512, b"EFI PART") or (_at(buf, 510, b"\x55\xaa") and buf[446 + 4] != 0):
        return "partition-table"
    for page in (4096, 8192, 16384, 65536):
        if _at(buf, page - 10, b"SWAPSPACE2"):
            return "swap"
    return None


REFUSAL = {
    "crypto_LUKS": "is encrypted with LUKS; unlock it first and give the opened device",
    "exfat": "holds exFAT, which overlayfs cannot use as a lower layer",
    "ntfs": "holds NTFS, which overlayd does not support",
    "vfat": "holds FAT, which is case-insensitive and cannot be an overlayfs lower layer",
    "partition-table": "holds a partition table, not a file system; choose one of its "
                       "partitions with 'partition' (a number, or a GPT partition label)",
    "swap": "is a swap area, not a file system",
}
