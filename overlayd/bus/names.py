"""Names fixed by DESIGN.md; scripts depend on them."""

from __future__ import annotations

BUS_NAME = "org.overlayd.Overlayd1"
ROOT_PATH = "/org/overlayd/Overlayd1"
MANAGER_IFACE = "org.overlayd.Overlayd1.Manager"
OVERLAY_IFACE = "org.overlayd.Overlayd1.Overlay"
JOB_IFACE = "org.overlayd.Overlayd1.Job"
OVERLAY_PREFIX = ROOT_PATH + "/overlay/"
JOB_PREFIX = ROOT_PATH + "/job/"

# Error names are these prefixes plus a class name: see errors.py.
ERROR_PREFIX = "org.overlayd.Overlayd1.Error."
DBUS_ERROR_PREFIX = "org.freedesktop.DBus.Error."

ACTION_PREFIX = "org.overlayd.overlayd1."
ACTION_CREATE = ACTION_PREFIX + "create"
ACTION_COMMIT = ACTION_PREFIX + "commit"
ACTION_DISCARD = ACTION_PREFIX + "discard"
ACTION_MANAGE_OTHERS = ACTION_PREFIX + "manage-others"
ACTION_ROOT = ACTION_PREFIX + "root"  # the root file system on an overlay at the next boot
ACTION_CANCEL_JOB = ACTION_PREFIX + "cancel-job"
ACTION_CANCEL_JOB_OTHER = ACTION_PREFIX + "cancel-job-other-user"


def bus_label(name: str) -> str:
    """systemd's bus_label_escape: [A-Za-z0-9] kept, any other byte as _xx (lowercase hex)."""
    if not name:
        return "_"
    out = []
    for i, b in enumerate(name.encode()):
        c = chr(b)
        if c.isascii() and (c.isalpha() or (c.isdigit() and i > 0)):
            out.append(c)
        else:
            out.append(f"_{b:02x}")
    return "".join(out)


def overlay_path(name: str) -> str:
    return OVERLAY_PREFIX + bus_label(name)


def job_path(job_id: int) -> str:
    return f"{JOB_PREFIX}{job_id}"


def job_id_of(path: str) -> int | None:
    """N of a job's object path, or None if PATH is not one."""
    tail = path.removeprefix(JOB_PREFIX)
    return int(tail) if tail != path and tail.isdigit() else None
