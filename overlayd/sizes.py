"""Sizes in bytes, parsed and shown (binary units). Pure, and free of pydantic, so that
overlayctl's table commands start without importing the models."""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_U64 = (1 << 64) - 1
# The smallest RAM for an overlay's writes: below it an overlay holds next to nothing, and
# mkfs.ext4 (the zram upper's file system) refuses a device under 256 KiB; at 1 MiB it
# leaves 966 KiB of blocks and 128 inodes, a tmpfs 256 pages.
MIN_SIZE = 1 << 20


def parse_size(value: object) -> int:
    """Bytes from an int or a human size: '512M', '1G', '1.5G', '4096' (binary units).

    Exact integer arithmetic (no float), and only ints or strings: a bool, a float or
    anything else is refused, so lax coercion never turns True into 1 byte.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a size is a whole number of bytes or a string such as '512M' or '1G'")
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d{1,30})(?:\.(\d{1,9}))?\s*([KMGT]?)(?:i?B)?\s*", value,
                     re.IGNORECASE)
    if not m:
        raise ValueError(f"'{value[:40]}' is not a size; write bytes or a size such as "
                         "'512M' or '1G'")
    whole, frac, unit = m.group(1), m.group(2) or "", _UNITS[m.group(3).upper()]
    return (int(whole) * unit) + (int(frac) * unit // 10 ** len(frac) if frac else 0)


def format_size(n: int) -> str:
    """'1G', '512M'; a size that is not a whole number of units also shows its bytes."""
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            v = n / _UNITS[unit]
            if round(v, 2) * _UNITS[unit] == n:  # exact with at most two decimals
                return f"{round(v, 2):g}{unit}"
            return f"{v:.2f}{unit} ({n} bytes)"
    return f"{n}B"


def format_approx(n: int) -> str:
    """'55.9M': a size that changes with every write (free space), to one decimal."""
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f}".removesuffix(".0") + unit
    return f"{n}B"


def human(n: float) -> str:
    """1.5 GiB, 12.0 MiB, 512 B: for what changes (rates, progress), not for settings."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20),
                         ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} B"
