"""What the Overlays app shows in words: sizes, usage, job progress, errors.

Pure (no GTK, no D-Bus), so that the venv's tests check it without PyGObject.
"""

from __future__ import annotations

import re

USAGE_LEVELS = ("ok", "high", "critical", "full")

# The words of a usage state, for the row and for the notification.
USAGE_WORDS = {"ok": "", "high": "RAM for the writes is getting full",
               "critical": "RAM for the writes is almost full",
               "full": "RAM for the writes is full: writes fail"}

# What a D-Bus error means when the daemon gave no message of its own (it always should).
FALLBACK = {
    "org.freedesktop.DBus.Error.ServiceUnknown": "overlayd is not running.",
    "org.freedesktop.DBus.Error.NameHasNoOwner": "overlayd is not running.",
    "org.freedesktop.DBus.Error.NoReply": "overlayd did not answer.",
    "org.freedesktop.DBus.Error.AccessDenied": "You are not allowed to do that.",
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired":
        "This needs a password, and no authentication agent is running.",
}

_REMOTE = re.compile(r"^GDBus\.Error:([A-Za-z0-9_.]+):\s*(.*)$", re.DOTALL)


def human(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def usage_level(usage: str) -> str:
    """The css class of the RAM bar for the UpperUsage property ('' is ok)."""
    return f"usage-{usage if usage in USAGE_LEVELS else 'ok'}"


def ram_text(used: int, size: int) -> str:
    pct = used * 100 // size if size else 0
    return f"RAM {human(used)} of {human(size)} ({pct}%)"


def image_free_text(fstype: str, free: int | None, used: int, size: int | None = None) -> str:
    """The image's free space (ImageFree), beside the writes: whether a commit fits. SIZE
    (ImageSize) 0 is the daemon's "not known now" (a commit has the image unmounted): the
    free space is not 0 then, it is unknown."""
    if fstype in ("squashfs", "erofs", "iso9660"):
        return "read-only image"
    if free is None or size == 0:
        return ""
    words = f"{human(free)} free in the image"
    return words + (": less than the writes" if free < used else "")


def time_left(end_usec: int, now_usec: int) -> str:
    """'1m 05s left' until END_USEC; '' if not known."""
    if not end_usec:
        return ""
    left = max(0, (end_usec - now_usec) // 1_000_000)
    return (f"{left // 60}m {left % 60:02d}s left" if left >= 60 else f"{left}s left")


def job_text(valid: bool, progress: float, rate: int, end_usec: int, now_usec: int) -> str:
    """The progress bar's text: '42% · 12.0 MiB/s · 5s left', or 'Waiting…'."""
    if not valid:
        return "Waiting…"
    parts = [f"{int(progress * 100)}%"]
    if rate:
        parts.append(f"{human(rate)}/s")
    left = time_left(end_usec, now_usec)
    if left:
        parts.append(left)
    return " · ".join(parts)


def changes_text(n: int) -> str:
    return "no change" if n == 0 else "1 change" if n == 1 else f"{n} changes"


def discard_body(name: str, n: int) -> str:
    if n == 0:
        return f"Overlay “{name}” has no change; it will be unmounted."
    return (f"{changes_text(n).capitalize()} in overlay “{name}” will be lost: they are only in "
            "RAM and will not be written to the image.")


def error_text(message: str) -> str:
    """The words of a failed call: the daemon's own message, without the D-Bus error name
    GDBus puts before it ('GDBus.Error:org...OverlayBusy: Overlay ... is busy' -> 'Overlay
    ... is busy'); a sentence of ours when the error came with none."""
    m = _REMOTE.match(message.strip())
    if not m:
        return message.strip() or "Something went wrong."
    name, text = m.group(1), m.group(2).strip()
    if text:
        return text
    return FALLBACK.get(name, "overlayd refused without saying why.")


def safe_name(stem: str) -> str:
    """An overlay name from a file name: letters, digits, '-', '_' and '.' kept."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "overlay"
    return name[:64]
