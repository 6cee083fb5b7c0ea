"""Decoding Create's spec and the options of Commit and Discard (no bus, no root).

The rule: a wrong shape (unknown key or option, wrong variant type) is InvalidArgs; a bad
value is InvalidSpec, as when the engine finds it later.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dbus_next import Variant

from overlayd.bus.errors import InvalidArgs
from overlayd.bus.spec import (
    COMMIT_OPTIONS,
    DISCARD_OPTIONS,
    SPEC_TYPES,
    decode_options,
    decode_spec,
)
from overlayd.errors import InvalidSpec
from overlayd.model import OverlaySpec
from overlayd.reconfig import FIXED_WHY

V = Variant


def fd_index_past_the_fds() -> Variant:
    """What dbus-next gives for an 'h' whose index names no fd that came with the call."""
    v = Variant("h", 0)
    v.value = None
    return v


def test_every_key_of_the_spec() -> None:
    spec = decode_spec("demo", {
        "image": V("s", "/srv/disk.img"), "fstype": V("s", "ext4"),
        "mountpoint": V("s", "/mnt/demo"), "size": V("t", 64 << 20),
        "mount_options": V("as", ["nosuid", "nodev"])})
    assert spec == OverlaySpec(name="demo", image="/srv/disk.img", fstype="ext4",
                               mountpoint="/mnt/demo", size=64 << 20,
                               mount_options=("nosuid", "nodev"))
    assert decode_spec("fd", {"image_fd": V("h", 7)}).image_fd == 7


def test_the_spec_keys_are_the_models_fields() -> None:
    assert set(SPEC_TYPES) == set(OverlaySpec.model_fields) - {"name"}


@pytest.mark.parametrize("variant", [V("t", 1 << 20), V("u", 1 << 20), V("x", 1 << 20),
                                     V("i", 1 << 20), V("s", "1M")])
def test_size_in_any_integer_type_or_as_text(variant: Variant) -> None:
    assert decode_spec("s", {"image": V("s", "/i"), "size": variant}).size == 1 << 20


@pytest.mark.parametrize(("spec", "words"), [
    ({"colour": V("s", "red")}, "Unknown spec key 'colour'"),
    ({"image": V("i", 3)}, "must be of type 's', not 'i'"),
    ({"size": V("b", True)}, "must be of type 't', not 'b'"),
    ({"mount_options": V("s", "ro")}, "must be of type 'as'"),
    ({"name": V("s", "x")}, "Create's first argument"),
    ({"image_fd": fd_index_past_the_fds()}, "names no file descriptor"),
])
def test_a_spec_of_the_wrong_shape_is_invalid_args(spec: dict[str, Variant],
                                                   words: str) -> None:
    with pytest.raises(InvalidArgs, match=words):
        decode_spec("x", spec)


@pytest.mark.parametrize(("name", "spec", "words"), [
    ("x", {"image": V("s", "disk.img")}, "absolute path"),
    ("x", {}, "exactly one of 'image'"),
    ("x", {"image": V("s", "/i"), "image_fd": V("h", 3)}, "exactly one of 'image'"),
    ("x", {"image": V("s", "/i"), "size": V("t", 0)}, "more than 0 bytes"),
    ("x", {"image": V("s", "/i"), "size": V("s", "12Q")}, "is not a size"),
    ("x", {"image": V("s", "/i"), "fstype": V("s", "vfat")}, "not supported"),
    ("x", {"image": V("s", "/i"), "mount_options": V("as", ["suid"])}, "not allowed"),
    ("a/b", {"image": V("s", "/i")}, "a name is 1 to 64"),
    ("", {"image": V("s", "/i")}, "a name is 1 to 64"),
])
def test_a_spec_with_a_bad_value_is_invalid_spec(name: str, spec: dict[str, Variant],
                                                 words: str) -> None:
    with pytest.raises(InvalidSpec, match=words):
        decode_spec(name, spec)


def test_a_megabyte_key_is_not_repeated_whole() -> None:
    key = "k" * (1 << 20)
    with pytest.raises(InvalidArgs) as e:
        decode_spec("x", {key: V("s", "v")})
    # the known keys are listed after it: the bound grows with them, not with the key
    assert len(str(e.value)) < 150 + len(", ".join(SPEC_TYPES)) and \
        "k" * 64 + "..." in str(e.value)
    with pytest.raises(InvalidArgs) as e:
        decode_options({key: V("b", True)}, DISCARD_OPTIONS, "Discard")
    assert len(str(e.value)) < 200 and "k" * 64 + "..." in str(e.value)


def test_options() -> None:
    assert decode_options({}, COMMIT_OPTIONS, "Commit") == {}
    assert decode_options({"force": V("b", True)}, DISCARD_OPTIONS, "Discard") == {"force": True}
    with pytest.raises(InvalidArgs,
                       match="Unknown Commit option 'now'; known options: at_shutdown"):
        decode_options({"now": V("b", True)}, COMMIT_OPTIONS, "Commit")
    with pytest.raises(InvalidArgs, match="option 'force' must be of type 'b', not 's'"):
        decode_options({"force": V("s", "yes")}, DISCARD_OPTIONS, "Discard")


def _method_doc(member: str) -> str:
    """The comment before MEMBER in the Manager's interface file, in one line."""
    xml = (Path(__file__).resolve().parents[2] / "dbus" /
           "org.overlayd.Overlayd1.Manager.xml").read_text()
    found = re.search(r"<!--((?:(?!-->).)*)-->\s*<method name=\"" + member + "\"", xml, re.S)
    assert found, member
    return " ".join(found.group(1).split())


def test_the_interface_file_names_every_spec_key() -> None:
    """Each branch added a key to SPEC_TYPES; the contract names them all (Create), and
    Reconfigure names each key it leaves as it is."""
    create = _method_doc("Create")
    assert [k for k in SPEC_TYPES if not re.search(rf"\b{k} \(", create)] == []
    reconfigure = _method_doc("Reconfigure")
    assert [k for k in FIXED_WHY if not re.search(rf"\b{k}\b", reconfigure)] == []
