"""The caller's spec (overlayd.model) and the error classes (overlayd.errors)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from overlayd import errors
from overlayd.errors import ALL_ERRORS, InvalidSpec, OverlaydError, describe_holders
from overlayd.model import (
    ALLOWED_MOUNT_OPTIONS,
    MAX_U64,
    SUPPORTED_FSTYPES,
    OverlaySpec,
    check_name,
    format_size,
    parse_size,
    parse_spec,
)

GiB = 1 << 30
MiB = 1 << 20


def spec(**kw: Any) -> dict[str, Any]:
    """A valid spec dict with KW merged in; a value of ... removes the key."""
    d: dict[str, Any] = {"name": "demo", "image": "/srv/img.raw"}
    d.update(kw)
    return {k: v for k, v in d.items() if v is not ...}


def invalid(data: Any) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as ei:
        parse_spec(data)
    return ei.value


# --- names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "a", "A", "0", "_", "demo-1", "x.y_z", "a" * 64, "a-", "a.", "a..b", "mnt2", "MNT", "_mnt",
])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name
    assert parse_spec(spec(name=name)).name == name


@pytest.mark.parametrize("name", [
    "", "a" * 65, "a" * 10_000, "a/b", "/a", "..", "../x", ".", ".hidden", "-x", "a\0b", "a\n",
    "a\nb", "a b", "a\tb", "tab\t", "ü", "a:b", "a,b", "mnt",
])
def test_invalid_names(name: str) -> None:
    err = invalid(spec(name=name))
    assert err.field == "name"
    assert "'name'" in str(err)
    assert len(str(err)) < 400  # a 10,000-character name is not echoed back whole


def test_reserved_name_message() -> None:
    err = invalid(spec(name="mnt"))
    assert "reserved" in str(err)


def test_name_rule_is_in_the_message() -> None:
    err = invalid(spec(name="-x"))
    assert "1 to 64 characters" in str(err)
    assert "does not start with '.' or '-'" in str(err)


@pytest.mark.parametrize("name", [5, None, ["demo"], 1.5, True, {"n": 1}])
def test_non_string_names(name: Any) -> None:
    err = invalid(spec(name=name))
    assert err.field == "name"
    assert "wrong type" in str(err) or "Invalid 'name'" in str(err)


@pytest.mark.parametrize("name", [5, None, b"demo"])
def test_check_name_refuses_non_strings(name: Any) -> None:
    with pytest.raises(ValueError):
        check_name(name)


# --- the shape of errors -----------------------------------------------------------------------

BAD_SPECS: list[tuple[dict[str, Any], str | None]] = [
    ({"image": "/i"}, "name"),
    (spec(foo=1), "foo"),
    (spec(mountPoint="/x"), "mountPoint"),
    (spec(name=""), "name"),
    (spec(name=7), "name"),
    (spec(image="rel/img"), "image"),
    (spec(image="/a\0b"), "image"),
    (spec(image=5), "image"),
    (spec(image="/" + "a" * 5000), "image"),
    (spec(mountpoint="mnt"), "mountpoint"),
    (spec(mountpoint="/m\0"), "mountpoint"),
    (spec(image=..., image_fd=-1), "image_fd"),
    (spec(image=..., image_fd="x"), "image_fd"),
    (spec(fstype="vfat"), "fstype"),
    (spec(size=0), "size"),
    (spec(size="lots"), "size"),
    (spec(size=2**64), "size"),
    (spec(size=1.5), "size"),
    (spec(mount_options=["exec"]), "mount_options"),
    (spec(mount_options="ro,rw"), "mount_options"),
    (spec(mount_options={"a": 1}), "mount_options"),
]


@pytest.mark.parametrize(("data", "field"), BAD_SPECS)
def test_errors_are_sentences_naming_the_field(data: dict[str, Any], field: str | None) -> None:
    err = invalid(data)
    text = str(err)
    assert err.field == field
    assert f"'{field}'" in text
    assert text[0].isupper()
    assert text.endswith(".")
    assert "\n" not in text
    for leak in ("Traceback", "pydantic", "https://", "Value error", "errors.pydantic.dev"):
        assert leak not in text
    assert err.dbus_name == "InvalidSpec"


def test_unknown_setting_message() -> None:
    err = invalid(spec(foo=1))
    assert str(err).startswith("Unknown setting 'foo'")
    for known in ("name", "image", "image_fd", "fstype", "mountpoint", "size", "mount_options"):
        assert known in str(err)


def test_missing_name_is_required() -> None:
    err = invalid({"image": "/i"})
    assert str(err) == "The setting 'name' is required."


def test_wrong_type_message() -> None:
    err = invalid(spec(name=7))
    assert str(err).startswith("The setting 'name' has the wrong type")


@pytest.mark.parametrize("data", [None, [], "name=demo", 5])
def test_spec_must_be_a_dict(data: Any) -> None:
    err = invalid(data)
    assert err.field is None
    assert "dictionary" in str(err)


# --- image / image_fd --------------------------------------------------------------------------

def test_image_path() -> None:
    s = parse_spec(spec(image="/srv/img.raw"))
    assert s.image == "/srv/img.raw"
    assert s.image_fd is None


def test_image_fd_alone() -> None:
    s = parse_spec(spec(image=..., image_fd=3))
    assert s.image is None
    assert s.image_fd == 3


@pytest.mark.parametrize("data", [
    spec(image=..., image_fd=...),
    spec(image="/srv/img.raw", image_fd=3),
    spec(image=None),
])
def test_exactly_one_of_image_and_image_fd(data: dict[str, Any]) -> None:
    err = invalid(data)
    assert "'image'" in str(err)
    assert "'image_fd'" in str(err)
    assert str(err).startswith("Give exactly one of")
    # A model-level rule: there is no single key at fault, so the field is not set.
    assert err.field in (None, "image", "image_fd")


@pytest.mark.parametrize(("key", "value"), [
    ("image", "img.raw"), ("image", "./img.raw"), ("image", ""), ("image", "~/img"),
    ("mountpoint", "mnt/x"), ("mountpoint", ""),
])
def test_relative_paths_refused(key: str, value: str) -> None:
    err = invalid(spec(**{key: value}))
    assert err.field == key
    assert "absolute path" in str(err)


@pytest.mark.parametrize("key", ["image", "mountpoint"])
def test_nul_in_path_refused(key: str) -> None:
    err = invalid(spec(**{key: "/srv/a\0b"}))
    assert err.field == key
    assert "NUL" in str(err)


def test_overlong_path_refused() -> None:
    err = invalid(spec(mountpoint="/" + "x" * 4000))
    assert err.field == "mountpoint"
    assert "4000" in str(err)


def test_mountpoint_accepted() -> None:
    assert parse_spec(spec(mountpoint="/srv/view")).mountpoint == "/srv/view"
    assert parse_spec(spec()).mountpoint is None


# --- size --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("1G", GiB),
    ("512M", 512 * MiB),
    ("1.5G", GiB + GiB // 2),
    ("1048576", MiB),
    ("1024K", MiB),
    ("1T", 1 << 40),
    ("1GiB", GiB),
    ("1gb", GiB),
    (" 2 G ", 2 * GiB),
    (MiB + 1, MiB + 1),
    (MAX_U64, MAX_U64),
])
def test_size_accepted(value: Any, expected: int) -> None:
    assert parse_spec(spec(size=value)).size == expected


def test_size_default_is_none() -> None:
    assert parse_spec(spec()).size is None


def test_parse_size_units() -> None:
    assert parse_size("1G") == 1 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size(123) == 123


@pytest.mark.parametrize("value", [
    0, "0", -1, "-1", -(1 << 30), 2**64, False, "lots", "1X", "", "1.5.5G", "1e3", "G", 1.5, [1],
])
def test_size_refused(value: Any) -> None:
    err = invalid(spec(size=value))
    assert err.field == "size"


def test_size_zero_message() -> None:
    assert "more than 0 bytes" in str(invalid(spec(size=0)))


def test_size_too_big_message() -> None:
    assert "64 bits" in str(invalid(spec(size=2**64)))


def test_size_true_refused() -> None:
    invalid(spec(size=True))


@pytest.mark.parametrize("value", [-1.0, 0.0, -1024.0])
def test_size_nonpositive_float_refused(value: float) -> None:
    invalid(spec(size=value))


def test_size_huge_string_is_invalid_spec() -> None:
    err = invalid(spec(size="9" * 400))
    assert err.field == "size"


def test_size_max_u64_as_string() -> None:
    assert parse_spec(spec(size=str(MAX_U64))).size == MAX_U64


def test_parse_size_exact_for_large_integers() -> None:
    assert parse_size("9007199254740993") == 9007199254740993


@pytest.mark.parametrize(("n", "text"), [
    (0, "0B"), (512, "512B"), (1024, "1K"), (1536, "1.5K"), (512 * MiB, "512M"), (GiB, "1G"),
    (GiB + GiB // 2, "1.5G"), (8 * GiB, "8G"), (1 << 40, "1T"), (3 * (1 << 40), "3T"),
])
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize("text", ["1K", "512M", "1G", "1.5G", "8G", "2T"])
def test_format_size_round_trips(text: str) -> None:
    assert format_size(parse_size(text)) == text


# --- mount options -----------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (["nosuid", "nodev"], ("nosuid", "nodev")),
    (("ro",), ("ro",)),
    ("nosuid,nodev,noexec", ("nosuid", "nodev", "noexec")),
    ("nosuid,,ro,", ("nosuid", "ro")),
    ("", ()),
    ([], ()),
    (["nosuid", "nosuid", "ro", "nosuid"], ("nosuid", "ro")),
    ("rw,rw", ("rw",)),
    (list(ALLOWED_MOUNT_OPTIONS[1:]), ALLOWED_MOUNT_OPTIONS[1:]),
])
def test_mount_options_accepted(value: Any, expected: tuple[str, ...]) -> None:
    assert parse_spec(spec(mount_options=value)).mount_options == expected


def test_mount_options_default_empty() -> None:
    assert parse_spec(spec()).mount_options == ()


@pytest.mark.parametrize("value", [
    ["exec"], ["suid"], ["dev"], "nosuid,exec", ["NOSUID"], [" ro"], ["ro,nosuid"], [1],
    ["uid=0"], ["remount"], ["bind"],
])
def test_mount_options_not_allowed(value: Any) -> None:
    err = invalid(spec(mount_options=value))
    assert err.field == "mount_options"
    assert "is not allowed" in str(err)
    assert "nosuid" in str(err)  # lists the allowed ones


@pytest.mark.parametrize("value", [["ro", "rw"], "rw,ro", ["nosuid", "ro", "rw"]])
def test_mount_options_ro_rw_contradict(value: Any) -> None:
    err = invalid(spec(mount_options=value))
    assert err.field == "mount_options"
    assert "contradict" in str(err)


def test_mount_options_set_is_checked() -> None:
    invalid(spec(mount_options={"suid"}))


# --- fstype ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fstype", SUPPORTED_FSTYPES)
def test_supported_fstypes(fstype: str) -> None:
    assert parse_spec(spec(fstype=fstype)).fstype == fstype


def test_supported_fstypes_per_design() -> None:
    assert {"ext2", "ext3", "ext4", "squashfs", "erofs", "iso9660", "xfs", "btrfs"} <= set(
        SUPPORTED_FSTYPES)


@pytest.mark.parametrize("fstype", ["vfat", "ntfs", "exfat", "overlay", "tmpfs", "EXT4", "", "ext"])
def test_unsupported_fstypes(fstype: str) -> None:
    err = invalid(spec(fstype=fstype))
    assert err.field == "fstype"
    assert "not supported" in str(err)


# --- the spec object ---------------------------------------------------------------------------

def test_spec_is_frozen() -> None:
    s = parse_spec(spec())
    with pytest.raises(ValidationError):
        s.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.size = 1  # type: ignore[misc]
    assert s.name == "demo"


def test_spec_full() -> None:
    s = parse_spec({"name": "demo", "image": "/srv/img", "fstype": "ext4", "mountpoint": "/mnt/v",
                    "size": "256M", "mount_options": ["nosuid", "nodev"]})
    assert s == OverlaySpec(name="demo", image="/srv/img", fstype="ext4", mountpoint="/mnt/v",
                            size=256 * MiB, mount_options=("nosuid", "nodev"))


# --- errors ------------------------------------------------------------------------------------

# DESIGN.md's list, plus what later issues added.
DESIGN_ERROR_NAMES = {
    "NoSuchOverlay", "OverlayExists", "OverlayBusy", "InvalidSpec", "NoSpace", "LimitExceeded",
    "MountFailed", "CommitFailed", "Failed",
    "ImageInUse",  # issue 11: a commit into an image others read, a create over one written
    "Cancelled",  # issue 12: a cancelled job, udisks2's Error.Cancelled
}


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_dbus_name_is_class_name(cls: type[OverlaydError]) -> None:
    assert issubclass(cls, OverlaydError)
    if cls is OverlaydError:
        assert cls.dbus_name == "Failed"
    else:
        assert cls.dbus_name == cls.__name__


def test_dbus_names_match_design() -> None:
    assert {c.dbus_name for c in ALL_ERRORS} == DESIGN_ERROR_NAMES
    assert len(ALL_ERRORS) == len(DESIGN_ERROR_NAMES)


def test_all_errors_lists_every_error_class() -> None:
    defined = {v for v in vars(errors).values()
               if isinstance(v, type) and issubclass(v, OverlaydError)}
    assert defined == set(ALL_ERRORS)


def test_error_messages() -> None:
    assert str(errors.NoSuchOverlay("demo")) == "There is no overlay named 'demo'."
    assert str(errors.OverlayExists("demo")) == "An overlay named 'demo' already exists."
    assert errors.NoSuchOverlay("demo").name == "demo"
    e = errors.MountFailed("no loop device", errno=16)
    assert (str(e), e.errno) == ("no loop device", 16)
    assert errors.OverlayBusy("busy").holders == []
    assert errors.OverlayBusy("busy", [(1, "init")]).holders == [(1, "init")]
    assert InvalidSpec("bad", field="size").field == "size"
    assert InvalidSpec("bad").field is None


def test_describe_holders_empty() -> None:
    assert describe_holders([]) == "a process that could not be identified"


def test_describe_holders_few() -> None:
    assert describe_holders([(12, "bash"), (40, "sleep")]) == "bash (pid 12), sleep (pid 40)"


def test_describe_holders_eight_has_no_more() -> None:
    text = describe_holders([(i, f"p{i}") for i in range(8)])
    assert "more" not in text
    assert text.endswith("p7 (pid 7)")


def test_describe_holders_and_n_more() -> None:
    text = describe_holders([(i, f"p{i}") for i in range(11)])
    assert text.endswith("p7 (pid 7) and 3 more")
    assert "p8" not in text
    assert text.count("(pid ") == 8


def test_a_zram_upper_is_recorded_and_a_tmpfs_record_is_unchanged() -> None:
    import json

    from overlayd.model import Lower, LowerKind, Merged, Overlay, OverlayState, Upper, UpperKind
    from overlayd.state import dump_record, load_record

    def rec(upper: Upper) -> Overlay:
        return Overlay(name="z", state=OverlayState.ACTIVE, upper=upper,
                       lowers=(Lower(kind=LowerKind.FILE, image="/i", fstype="ext4"),),
                       merged=Merged(mountpoint="/m"))
    tmpfs = rec(Upper(size=1 << 20))
    assert json.loads(dump_record(tmpfs))["upper"] == {"kind": "tmpfs", "size": 1 << 20}
    zram = rec(Upper(kind=UpperKind.ZRAM, size=1 << 20, device="/dev/zram3",
                     fs_uuid="0b5e3f6a-8f5c-4f59-9a53-6a0e2f7f2d11", compressor="lz4"))
    assert load_record(dump_record(zram)) == zram


def test_compressor_only_with_zram() -> None:
    from overlayd.model import parse_spec
    with pytest.raises(InvalidSpec, match="compressor"):
        parse_spec({"name": "a", "image": "/x", "compressor": "lz4"})
    with pytest.raises(InvalidSpec, match="compressor"):
        parse_spec({"name": "a", "image": "/x", "upper": "zram", "compressor": "lz4; rm"})
    assert parse_spec({"name": "a", "image": "/x", "upper": "zram"}).compressor is None
