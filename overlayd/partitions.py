"""Partition tables of partitioned images (a Raspberry Pi ``.img``, a VM's raw disk): MBR
(primary partitions 1-4, logical partitions 5 and up in an extended partition) and GPT
(behind its protective MBR; the header's and the entries' CRC32 checked; the partition
names, UTF-16LE, are the labels). Pure: the bytes come from READ(offset, length), which
returns fewer bytes at the end of the image; nothing here opens a file.

Sectors: MBR tables are read with 512-byte sectors (the only size MBR images in the wild
use: with a 4 KiB-sector disk the table cannot tell its own sector size). A GPT header is
looked for at 512 bytes, then at 4096 (a disk with 4 KiB logical sectors), and its sector
size is the one where it was found.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

Reader = Callable[[int, int], bytes]

SECTOR = 512
GPT_SECTORS = (512, 4096)
MBR_PROTECTIVE = 0xEE
MBR_EXTENDED = (0x05, 0x0F, 0x85)
MAX_LOGICAL = 128  # an EBR chain longer than this is a loop or a broken table
MAX_GPT_ENTRIES_BYTES = 1 << 20  # 128 entries of 128 bytes is 16 KiB; this is plenty


class PartitionError(ValueError):
    """What is wrong, as the end of a sentence that starts with the image's name."""


@dataclass(frozen=True)
class Partition:
    number: int  # 1-4 primary, 5+ logical (MBR); the entry's index + 1 (GPT)
    start: int  # in bytes from the start of the image
    size: int  # in bytes
    label: str = ""  # GPT partition name; "" for MBR
    type: str = ""  # MBR: the type byte as 2 hex digits; GPT: the type GUID

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Table:
    kind: str  # "mbr" | "gpt"
    sector: int
    partitions: tuple[Partition, ...]


def read_table(read: Reader, image_size: int) -> Table:
    """The image's partition table; PartitionError when it has none (or a broken one)."""
    mbr = read(0, SECTOR)
    for sector in GPT_SECTORS:
        head = read(sector, 92)
        if head[:8] == b"EFI PART":
            return _gpt(read, sector, image_size)
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        raise PartitionError("has no partition table (no MBR signature, no GPT header)")
    entries = [_mbr_entry(mbr, i) for i in range(4)]
    if any(status not in (0x00, 0x80) for status, _, _, _ in entries) or \
            not any(kind for _, kind, _, _ in entries):
        raise PartitionError("has no partition table (its first sector is not an MBR)")
    if any(kind == MBR_PROTECTIVE for _, kind, _, _ in entries):
        raise PartitionError("has a protective MBR but no valid GPT header behind it")
    parts: list[Partition] = []
    extended: tuple[int, int] | None = None
    for i, (_, kind, first, count) in enumerate(entries):
        if kind == 0 or count == 0:
            continue
        if kind in MBR_EXTENDED:
            extended = (first, count)
            continue
        parts.append(Partition(i + 1, first * SECTOR, count * SECTOR, type=f"{kind:02x}"))
    if extended is not None:
        parts += _logical(read, *extended)
    return Table("mbr", SECTOR, tuple(parts))


def _mbr_entry(sector: bytes, i: int) -> tuple[int, int, int, int]:
    """(status, type, first sector, sector count) of entry I of an MBR or EBR."""
    off = 446 + 16 * i
    status, kind = sector[off], sector[off + 4]
    first, count = struct.unpack_from("<II", sector, off + 8)
    return status, kind, first, count


def _logical(read: Reader, ext_first: int, ext_count: int) -> list[Partition]:
    """The logical partitions: a chain of EBRs, each holding one partition (relative to
    the EBR) and a link to the next EBR (relative to the extended partition)."""
    parts: list[Partition] = []
    ebr_at, seen = ext_first, set()
    while len(parts) < MAX_LOGICAL:
        if ebr_at in seen or not ext_first <= ebr_at < ext_first + ext_count:
            raise PartitionError("has a broken extended partition (its chain of logical "
                                 "partitions loops or leaves it)")
        seen.add(ebr_at)
        ebr = read(ebr_at * SECTOR, SECTOR)
        if len(ebr) < SECTOR or ebr[510:512] != b"\x55\xaa":
            raise PartitionError("has a broken extended partition (a logical partition's "
                                 "boot record has no signature)")
        _, kind, first, count = _mbr_entry(ebr, 0)
        if kind and count:
            parts.append(Partition(5 + len(parts), (ebr_at + first) * SECTOR, count * SECTOR,
                                   type=f"{kind:02x}"))
        _, link_kind, link, _ = _mbr_entry(ebr, 1)
        if link_kind == 0 or link == 0:
            return parts
        ebr_at = ext_first + link
    raise PartitionError(f"has more than {MAX_LOGICAL} logical partitions")


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _gpt(read: Reader, sector: int, image_size: int) -> Table:
    head = read(sector, sector)
    header_size = struct.unpack_from("<I", head, 12)[0]
    if not 92 <= header_size <= min(len(head), sector):
        raise PartitionError(f"has a GPT header of a size it cannot have ({header_size} "
                             "bytes)")
    stored = struct.unpack_from("<I", head, 16)[0]
    zeroed = head[:16] + b"\0\0\0\0" + head[20:header_size]
    if _crc(zeroed) != stored:
        raise PartitionError("has a GPT header whose checksum (CRC32) is wrong: the table "
                             "is damaged")
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", head, 72)
    if entry_size < 128 or entry_size % 8 or count * entry_size > MAX_GPT_ENTRIES_BYTES:
        raise PartitionError(f"has a GPT header with {count} entries of {entry_size} bytes, "
                             "which no valid table has")
    raw = read(entries_lba * sector, count * entry_size)
    if len(raw) < count * entry_size:
        raise PartitionError("is too short for its GPT: the partition entries are past its "
                             "end (truncated?)")
    if _crc(raw) != entries_crc:
        raise PartitionError("has GPT partition entries whose checksum (CRC32) is wrong: "
                             "the table is damaged")
    parts = []
    for i in range(count):
        e = raw[i * entry_size:(i + 1) * entry_size]
        if e[:16] == bytes(16):
            continue  # an unused entry
        first, last = struct.unpack_from("<QQ", e, 32)
        if last < first:
            raise PartitionError(f"has a GPT entry {i + 1} that ends before it starts")
        label = e[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(Partition(i + 1, first * sector, (last - first + 1) * sector,
                               label=label, type=_guid(e[:16])))
    return Table("gpt", sector, tuple(parts))


def _guid(b: bytes) -> str:
    a, b2, c = struct.unpack_from("<IHH", b)
    return f"{a:08x}-{b2:04x}-{c:04x}-{b[8:10].hex()}-{b[10:16].hex()}"


def find(table: Table, want: int | str, image_size: int) -> Partition:
    """Partition WANT (a number, or a GPT label) of TABLE, checked to lie within the image.
    PartitionError saying which partitions there are when it is not found."""
    if isinstance(want, int):
        found = [p for p in table.partitions if p.number == want]
    else:
        if table.kind != "gpt":
            raise PartitionError(f"has an MBR partition table, whose partitions have no "
                                 f"labels; give partition '{want[:40]}' as a number "
                                 f"({_numbers(table)})")
        found = [p for p in table.partitions if p.label == want]
        if len(found) > 1:
            raise PartitionError(f"has {len(found)} partitions labelled '{want[:40]}'; give "
                                 f"the number instead ({_numbers(table)})")
    if not found:
        shown = want if isinstance(want, int) else f"'{want[:40]}'"
        raise PartitionError(f"has no partition {shown} in its {table.kind.upper()} table "
                             f"({_numbers(table)})")
    part = found[0]
    if part.size == 0 or part.start == 0:
        raise PartitionError(f"has a partition {part.number} that is empty or overlaps "
                             "the table")
    if part.end > image_size:
        raise PartitionError(f"is {image_size} bytes long, but its partition {part.number} "
                             f"ends at byte {part.end}: the image is truncated or the "
                             "table is wrong")
    return part


def _numbers(table: Table) -> str:
    if not table.partitions:
        return "it lists none"
    shown = [f"{p.number} '{p.label}'" if p.label else str(p.number)
             for p in table.partitions[:16]]
    return "it has " + ", ".join(shown)


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether byte ranges A and B, each (offset, size) with size 0 for "to the end",
    share a byte."""
    (a_off, a_size), (b_off, b_size) = a, b
    a_end = a_off + a_size if a_size else None
    b_end = b_off + b_size if b_size else None
    return (a_end is None or b_off < a_end) and (b_end is None or a_off < b_end)
