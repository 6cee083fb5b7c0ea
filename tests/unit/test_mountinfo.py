"""Parsing /proc/self/mountinfo lines (overlayd.mountinfo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlayd.host.mounttable import read_mounts
from overlayd.mountinfo import MountInfo, parse, parse_line, unescape

# proc(5)'s own example.
PROC5 = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"

OVERLAY = (
    "120 25 0:60 / /run/overlayd/mnt/demo rw,nosuid,relatime shared:70 - overlay overlayd-demo "
    "rw,lowerdir+=/run/overlayd/demo/lower,upperdir=/run/overlayd/demo/rw/upper,"
    "workdir=/run/overlayd/demo/rw/work,redirect_dir=off,index=off,xino=off,userxattr"
)


def test_proc5_example() -> None:
    m = parse_line(PROC5)
    assert m == MountInfo(
        mount_id=36, parent_id=35, device="98:0", root="/mnt1", target="/mnt2",
        options=("rw", "noatime"), fstype="ext3", source="/dev/root",
        super_options=("rw", "errors=continue"),
    )


@pytest.mark.parametrize("optional", ["", "shared:1", "shared:1 master:2",
                                      "shared:1 master:2 propagate_from:3 unbindable"])
def test_optional_fields(optional: str) -> None:
    fields = ["22", "1", "0:21", "/", "/sys", "rw,nosuid", *optional.split(),
              "-", "sysfs", "sysfs", "rw"]
    m = parse_line(" ".join(fields))
    assert (m.mount_id, m.parent_id, m.device) == (22, 1, "0:21")
    assert (m.target, m.fstype, m.source) == ("/sys", "sysfs", "sysfs")
    assert m.options == ("rw", "nosuid")
    assert m.super_options == ("rw",)


def test_trailing_newline() -> None:
    assert parse_line(PROC5 + "\n") == parse_line(PROC5)


@pytest.mark.parametrize(("raw", "target"), [
    (r"/mnt/a\040b", "/mnt/a b"),
    (r"/mnt/tab\011x", "/mnt/tab\tx"),
    (r"/mnt/nl\012x", "/mnt/nl\nx"),
    (r"/mnt/back\134slash", "/mnt/back\\slash"),
    (r"/mnt/\040\011\012\134", "/mnt/ \t\n\\"),
    (r"/mnt/lit\134040", "/mnt/lit\\040"),  # a backslash followed by "040" in the name
    ("/mnt/plain", "/mnt/plain"),
])
def test_escaped_target(raw: str, target: str) -> None:
    m = parse_line(f"50 20 8:1 / {raw} rw shared:3 - ext4 /dev/sda1 rw")
    assert m.target == target


def test_escaped_root_and_source() -> None:
    m = parse_line(r"50 20 8:1 /sub\040dir /mnt rw - ext4 /dev/my\040disk rw")
    assert m.root == "/sub dir"
    assert m.source == "/dev/my disk"


def test_unescape() -> None:
    assert unescape(r"a\040b\134c") == "a b\\c"
    assert unescape("no escapes") == "no escapes"
    assert unescape(r"\04") == r"\04"  # not a full octal triple


def test_empty_source() -> None:
    m = parse_line("60 20 0:50 / /mnt/x rw - tmpfs  rw,size=1024k")
    assert m.source == ""
    assert m.fstype == "tmpfs"
    assert m.super_option("size") == "1024k"


def test_overlay_line() -> None:
    m = parse_line(OVERLAY)
    assert m.fstype == "overlay"
    assert m.source == "overlayd-demo"
    assert m.target == "/run/overlayd/mnt/demo"
    assert m.super_options[0] == "rw"
    assert m.super_option("lowerdir+") == "/run/overlayd/demo/lower"
    assert m.super_option("upperdir") == "/run/overlayd/demo/rw/upper"
    assert m.super_option("workdir") == "/run/overlayd/demo/rw/work"
    assert m.super_option("redirect_dir") == "off"
    assert m.super_option("index") == "off"


def test_super_option_flag_and_absent() -> None:
    m = parse_line(OVERLAY)
    assert m.super_option("userxattr") == ""
    assert m.super_option("rw") == ""
    assert m.super_option("metacopy") is None
    assert m.super_option("lowerdir") is None  # only lowerdir+= is present
    assert m.super_option("user") is None  # no prefix matching


def test_super_option_value_with_equals() -> None:
    m = parse_line("70 20 0:51 / /m rw - fuse.x src rw,opt=a=b")
    assert m.super_option("opt") == "a=b"


def test_legacy_lowerdir_with_colons() -> None:
    m = parse_line("71 20 0:52 / /m rw - overlay overlay "
                   "rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w")
    assert m.super_option("lowerdir") == "/l1:/l2"


@pytest.mark.parametrize(("raw", "value"), [
    (r"/srv/a\054b", "/srv/a,b"),
    (r"/srv/back\134slash", "/srv/back\\slash"),
])
def test_escaped_comma_and_backslash_in_overlay_option(raw: str, value: str) -> None:
    m = parse_line(f"72 20 0:53 / /m rw - overlay overlay "
                   f"rw,lowerdir+={raw},upperdir=/u,workdir=/w")
    assert m.super_option("lowerdir+") == value
    assert m.super_option("upperdir") == "/u"


@pytest.mark.parametrize("line", [
    "",
    "garbage",
    "1 2 3",
    "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 ext3 /dev/root rw",   # no separator
    "36 35 98:0 /mnt1 /mnt2 rw -",                                      # nothing after it
    "36 35 98:0 /mnt1 /mnt2 rw - ext3",
    "36 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root",
    "x 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root rw",                     # id not a number
    "36 y 98:0 /mnt1 /mnt2 rw - ext3 /dev/root rw",
    "36 35 - /mnt1 /mnt2 rw ext3 /dev/root rw",                         # '-' too early
])
def test_malformed_lines(line: str) -> None:
    with pytest.raises(ValueError):
        parse_line(line)


def test_parse_skips_blank_lines() -> None:
    mounts = parse(f"{PROC5}\n\n{OVERLAY}\n   \n")
    assert [m.mount_id for m in mounts] == [36, 120]


def test_parse_raises_on_a_bad_line() -> None:
    with pytest.raises(ValueError):
        parse(f"{PROC5}\nnot a mount\n")


def test_read_live_mountinfo() -> None:
    mounts = read_mounts()
    assert mounts
    assert all(m.target.startswith("/") for m in mounts)
    assert any(m.target == "/" for m in mounts)
    assert all(":" in m.device for m in mounts)


def test_read_mounts_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "mountinfo"
    f.write_text(f"{PROC5}\n{OVERLAY}\n")
    assert [m.target for m in read_mounts(str(f))] == ["/mnt2", "/run/overlayd/mnt/demo"]


def test_mountinfo_is_frozen() -> None:
    m = parse_line(PROC5)
    with pytest.raises(AttributeError):
        m.target = "/x"  # type: ignore[misc]
