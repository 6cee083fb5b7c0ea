"""How full an overlay's RAM is, in four words: the ``UpperUsage`` property.

Pure. ``level`` classifies one reading of the upper (a statvfs) against the thresholds of
``overlayd.conf`` (``usage_high``, ``usage_critical``). ``full`` is when the upper has no
block left: writers get ENOSPC from then on.
"""

from __future__ import annotations

import enum

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
