"""Partition tables written in Python, for the tests: an MBR (primaries, and logical
partitions in an extended one) and a GPT (protective MBR, header and entries with their
CRC32s, the backup copy at the end). Each returns (offset, bytes) pieces to write into an
image of the given size; the tests build images of any size from them."""

from __future__ import annotations

import struct
import uuid
import zlib

SECTOR = 512
Piece = tuple[int, bytes]


def mbr_sector(entries: list[tuple[int, int, int]], boot: int = 0) -> bytes:
    """A boot record: up to 4 (type, first sector, sector count) entries."""
    buf = bytearray(SECTOR)
    for i, (kind, first, count) in enumerate(entries):
        off = 446 + 16 * i
        buf[off] = 0x80 if i == boot and kind and boot >= 0 else 0
        buf[off + 4] = kind
        struct.pack_into("<II", buf, off + 8, first, count)
    buf[510:512] = b"\x55\xaa"
    return bytes(buf)


def mbr(primaries: list[tuple[int, int, int]],
        logicals: list[tuple[int, int, int]] | None = None) -> list[Piece]:
    """An MBR with PRIMARIES (type, first, count); LOGICALS (type, first, count), absolute
    sectors, go into an extended partition that must be among the primaries (type 0x0f):
    each gets an EBR in the sector just before it."""
    pieces: list[Piece] = [(0, mbr_sector(primaries))]
    if logicals:
        ext_first = next(first for kind, first, _ in primaries if kind in (0x05, 0x0F))
        for i, (kind, first, count) in enumerate(logicals):
            ebr_at = first - 1
            entries = [(kind, 1, count)]
            if i + 1 < len(logicals):
                nxt = logicals[i + 1][1] - 1
                entries.append((0x05, nxt - ext_first, logicals[i + 1][2] + 1))
            pieces.append((ebr_at * SECTOR, mbr_sector(entries, boot=-1)))
    return pieces


LINUX_FS = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")


def gpt(size: int, parts: list[tuple[str, int, int]], *, sector: int = SECTOR,
        entries: int = 128) -> list[Piece]:
    """A GPT for an image of SIZE bytes: PARTS (label, first sector, sector count)."""
    lbas = size // sector
    raw = bytearray(entries * 128)
    for i, (label, first, count) in enumerate(parts):
        e = struct.pack("<16s16sQQQ72s", LINUX_FS.bytes_le, uuid.uuid4().bytes_le, first,
                        first + count - 1, 0, label.encode("utf-16-le"))
        raw[i * 128:(i + 1) * 128] = e
    entries_crc = zlib.crc32(bytes(raw)) & 0xFFFFFFFF
    entry_sectors = (len(raw) + sector - 1) // sector

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        h = bytearray(struct.pack(
            "<8sIIIIQQQQ16sQIII", b"EFI PART", 0x00010000, 92, 0, 0, current, backup,
            2 + entry_sectors, lbas - 2 - entry_sectors, uuid.uuid4().bytes_le,
            entries_lba, entries, 128, entries_crc))
        struct.pack_into("<I", h, 16, zlib.crc32(bytes(h)) & 0xFFFFFFFF)
        return bytes(h) + bytes(sector - len(h))

    protective = mbr_sector([(0xEE, 1, min(lbas - 1, 0xFFFFFFFF))], boot=-1)
    return [(0, protective + bytes(max(0, sector - SECTOR))),
            (sector, header(1, lbas - 1, 2)),
            (2 * sector, bytes(raw)),
            ((lbas - 1 - entry_sectors) * sector, bytes(raw)),
            ((lbas - 1) * sector, header(lbas - 1, 1, lbas - 1 - entry_sectors))]


def to_bytes(size: int, pieces: list[Piece]) -> bytes:
    buf = bytearray(size)
    for off, data in pieces:
        buf[off:off + len(data)] = data
    return bytes(buf)


def write_into(path: str, pieces: list[Piece]) -> None:
    with open(path, "r+b") as f:
        for off, data in pieces:
            f.seek(off)
            f.write(data)
