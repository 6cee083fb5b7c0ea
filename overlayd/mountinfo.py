"""The mount table as overlayd sees it: ``MountInfo`` and the /proc/self/mountinfo parser
(proc(5)). Pure; reading the file is the host's job (``host/mounttable.py``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    if "\\" not in field:  # the common case; with hundreds of mounts this adds up
        return field
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class MountInfo:
    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str
    target: str
    options: tuple[str, ...]  # per-mount options
    fstype: str
    source: str
    super_options: tuple[str, ...]

    def super_option(self, key: str) -> str | None:
        """The value of KEY=VALUE in the super options, '' for a bare flag, None if absent."""
        for opt in self.super_options:
            k, _, v = opt.partition("=")
            if k == key:
                return v
        return None


def parse_line(line: str) -> MountInfo:
    fields = line.rstrip("\n").split(" ")
    try:
        sep = fields.index("-", 6)
    except ValueError:
        raise ValueError(f"not a mountinfo line: {line!r}") from None
    if len(fields) < sep + 4:
        raise ValueError(f"not a mountinfo line: {line!r}")
    return MountInfo(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        device=fields[2],
        root=unescape(fields[3]),
        target=unescape(fields[4]),
        options=tuple(fields[5].split(",")),
        fstype=fields[sep + 1],
        source=unescape(fields[sep + 2]),
        # The kernel octal-escapes ',' inside a value (seq_show_option): split first, then decode.
        super_options=tuple(unescape(o) for o in fields[sep + 3].split(",")),
    )


def parse(text: str) -> list[MountInfo]:
    return [parse_line(line) for line in text.splitlines() if line.strip()]
