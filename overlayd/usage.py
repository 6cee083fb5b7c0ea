"""How full an overlay's RAM is, in four words: the ``UpperUsage`` property.

Pure. ``level`` classifies one reading of the upper (a statvfs) against the thresholds of
``overlayd.conf`` (``usage_high``, ``usage_critical``). ``full`` is when the upper has no
block left: writers get ENOSPC from then on.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from overlayd.config import DaemonConfig
from overlayd.model import UpperUsage


class UsageLevel(enum.StrEnum):
    OK = "ok"
    HIGH = "high"
    CRITICAL = "critical"
    FULL = "full"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {UsageLevel.OK: 0, UsageLevel.HIGH: 1, UsageLevel.CRITICAL: 2, UsageLevel.FULL: 3}


def level(usage: UpperUsage, config: DaemonConfig) -> UsageLevel:
    if usage.size <= 0:  # not readable right now (the tmpfs is being replaced)
        return UsageLevel.OK
    if usage.used >= usage.size:
        return UsageLevel.FULL
    percent = usage.used * 100 / usage.size
    if percent >= config.usage_critical:
        return UsageLevel.CRITICAL
    if percent >= config.usage_high:
        return UsageLevel.HIGH
    return UsageLevel.OK


def percent(usage: UpperUsage) -> int:
    return int(usage.used * 100 // usage.size) if usage.size > 0 else 0


class SpaceCache:
    """The free space of the images' file systems, read at most once per file system every
    TTL seconds (``usage_interval``), however many overlays share it and however often
    clients read the properties (GetManagedObjects reads every overlay's)."""

    def __init__(self, read: Callable[[str], tuple[int, int]], clock: Callable[[], float],
                 ttl: float) -> None:
        self._read = read  # PATH -> (size, free); may raise
        self._clock = clock
        self._ttl = ttl
        self._seen: dict[str, tuple[float, tuple[int, int]]] = {}

    def get(self, path: str) -> tuple[int, int]:
        now = self._clock()
        hit = self._seen.get(path)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        value = self._read(path)
        if len(self._seen) >= 64:  # images whose overlays are gone are not kept for ever
            self._seen = {p: v for p, v in self._seen.items() if now - v[0] < self._ttl}
        self._seen[path] = (now, value)
        return value

    def forget(self, path: str) -> None:
        """PATH changed (a commit wrote into it), or is gone."""
        self._seen.pop(path, None)
