"""What the measurements write: the images, the small write of a cycle, the commit data."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tools.bench.settings import MIB, BenchError, Settings, sh

SMALL_SIZE = 4096
FILES_PER_DIR = 100
BIG_NAME = "big.bin"
TREE_NAME = "tree"

Fill = Callable[[Path], None]


def make_image(path: Path, size_mib: int) -> Path:
    """A sparse ext4 image; inode tables and journal zeroed now, not behind our back later."""
    sh("truncate", "-s", f"{size_mib}M", str(path))
    sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(path))
    return path


def image_mib(settings: Settings) -> int:
    """Room for the big file with slack, and inodes for the small files (one per 16 KiB)."""
    return max(1024, settings.big_mib * 3 // 2 + 128,
               settings.small_files * 32 * 1024 // MIB + 128)


def write_small(directory: Path) -> None:
    with open(directory / "hello.txt", "wb") as f:
        f.write(b"hello from overlayd's benchmark\n")


def write_big(directory: Path, mib: int) -> None:
    """MIB MiB of random data, every MiB different; nothing sparse, nothing compressible."""
    block = bytearray(os.urandom(MIB))
    with open(directory / BIG_NAME, "wb") as f:
        for i in range(mib):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)


def write_tree(directory: Path, count: int) -> None:
    """COUNT files of 4 KiB of random data, FILES_PER_DIR to a directory."""
    pool = os.urandom(2 * SMALL_SIZE)
    tree = directory / TREE_NAME
    tree.mkdir()
    for i in range(count):
        sub = tree / f"d{i // FILES_PER_DIR:04d}"
        if i % FILES_PER_DIR == 0:
            sub.mkdir()
        offset = i % SMALL_SIZE
        (sub / f"f{i % FILES_PER_DIR:03d}").write_bytes(pool[offset:offset + SMALL_SIZE])


def check_big(directory: Path, mib: int) -> None:
    size = (directory / BIG_NAME).stat().st_size
    if size != mib * MIB:
        raise BenchError(f"'{directory / BIG_NAME}' has {size} bytes, not {mib * MIB}.")


def check_tree(directory: Path, count: int) -> None:
    found = sum(len(files) for _, _, files in os.walk(directory / TREE_NAME))
    if found != count:
        raise BenchError(f"'{directory / TREE_NAME}' holds {found} files, not {count}.")


@dataclass(frozen=True)
class CommitJob:
    """What one commit measurement writes, and how it checks the result."""

    label: str
    name: str  # the file or directory written at the top of the overlay / the source
    data_bytes: int
    fill: Fill
    check: Fill

    @property
    def tmpfs_size(self) -> int:
        return self.data_bytes + 64 * MIB


def big_job(mib: int) -> CommitJob:
    return CommitJob("big", BIG_NAME, mib * MIB, lambda d: write_big(d, mib),
                     lambda d: check_big(d, mib))


def small_job(count: int) -> CommitJob:
    return CommitJob("small", TREE_NAME, count * SMALL_SIZE, lambda d: write_tree(d, count),
                     lambda d: check_tree(d, count))


@dataclass
class CommitTiming:
    seconds: float  # the whole timed phase
    apply_seconds: float | None = None  # the engine's own figure for applying the upper
