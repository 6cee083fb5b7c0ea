"""Decoding the a{sv} arguments: Create's spec, and the options of Commit and Discard.

Here the *shape* of a call is checked: known keys, the variant type of each. A wrong shape
is ``InvalidArgs``. The values are the model's business (``parse_spec``): a bad value is
``InvalidSpec``, as it is when the engine finds it later (see errors.py).
"""

from __future__ import annotations

from typing import Any

from dbus_next import Variant
from pydantic import ValidationError

from overlayd.bus.errors import InvalidArgs, shown
from overlayd.model import OverlaySpec, SpecSettings, parse_spec, spec_error

# Variant types accepted for each spec key ('size' may also be a string like "1G"); the
# first is the one an error message asks for.
SPEC_TYPES: dict[str, tuple[str, ...]] = {
    "image": ("s",), "image_fd": ("h",), "fstype": ("s",), "mountpoint": ("s",),
    "size": ("t", "u", "x", "i", "s"), "mount_options": ("as",), "layers": ("as",),
    "upper": ("s",), "compressor": ("s",), "engine": ("s",),
    # a partition number (an integer type), or a GPT partition label (s)
    "partition": ("u", "t", "i", "x", "q", "n", "y", "s"),
}
# at_shutdown: the root overlay's writes are committed (Commit) or thrown away (Discard,
# also the default for it) when the system shuts down; only the root overlay has it.
# target: "image" (in place) or "layer" (a new layer file, issue 14); layer_format:
# "erofs" or "squashfs" (model.CommitTarget, model.LayerFormat).
COMMIT_OPTIONS: dict[str, str] = {"at_shutdown": "b", "target": "s", "layer_format": "s"}
DISCARD_OPTIONS: dict[str, str] = {"force": "b", "at_shutdown": "b"}
# Squash: into one layer file of layer_format, or (target "image") into the image;
# Revert: discard (b) throws the writes in RAM away with the top layer (issue 14).
SQUASH_OPTIONS: dict[str, str] = {"target": "s", "layer_format": "s"}
REVERT_OPTIONS: dict[str, str] = {"discard": "b"}
ROOT_AT_BOOT_OPTIONS: dict[str, str] = {"size": "s"}
# Reconfigure takes no option yet; the argument is there so that one can come.
RECONFIGURE_OPTIONS: dict[str, str] = {}


def decode_options(options: dict[str, Variant], allowed: dict[str, str],
                   what: str) -> dict[str, Any]:
    """The values of OPTIONS, each a known option of WHAT with its type."""
    out = {}
    for key, variant in options.items():
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise InvalidArgs(f"Unknown {what} option '{shown(key)}'; known options: {known}.")
        if variant.signature != allowed[key]:
            raise InvalidArgs(f"The {what} option '{key}' must be of type "
                              f"'{allowed[key]}', not '{shown(variant.signature)}'.")
        out[key] = variant.value
    return out


def decode_spec(name: str, spec: dict[str, Variant]) -> OverlaySpec:
    """Create's NAME and SPEC as an OverlaySpec: InvalidArgs for a wrong shape, InvalidSpec
    (from the model) for a bad value."""
    data: dict[str, Any] = {"name": name}
    for key, variant in spec.items():
        if key == "name":
            raise InvalidArgs("The name is Create's first argument, not a key of the spec.")
        types = SPEC_TYPES.get(key)
        if types is None:
            known = ", ".join(SPEC_TYPES)
            raise InvalidArgs(f"Unknown spec key '{shown(key)}'; the known keys are {known}.")
        if variant.signature not in types:
            raise InvalidArgs(f"The spec key '{key}' must be of type '{types[0]}', "
                              f"not '{shown(variant.signature)}'.")
        if key == "image_fd" and variant.value is None:
            # dbus-next gives None for an index past the fds that came with the message.
            raise InvalidArgs("The spec key 'image_fd' names no file descriptor that came "
                              "with the call.")
        data[key] = variant.value
    return parse_spec(data)


def decode_settings(spec: dict[str, Variant]) -> dict[str, Any]:
    """Reconfigure's SPEC: the keys it gives, with their values as the model checked them
    (a Create spec without name and image_fd: the image goes by path, to compare)."""
    data: dict[str, Any] = {}
    for key, variant in spec.items():
        types = SPEC_TYPES.get(key)
        if types is None or key == "image_fd":
            known = ", ".join(k for k in SPEC_TYPES if k != "image_fd")
            raise InvalidArgs(f"Unknown Reconfigure spec key '{shown(key)}'; the known keys "
                              f"are {known}.")
        if variant.signature not in types:
            raise InvalidArgs(f"The spec key '{key}' must be of type '{types[0]}', "
                              f"not '{shown(variant.signature)}'.")
        data[key] = variant.value
    # 'compressor' alone is checked as for a zram upper: the key left out stays as it is,
    # and the model's default (tmpfs) would refuse it; Reconfigure compares it with the
    # live overlay's (reconfig.py).
    implied = {"upper": "zram"} if "compressor" in data and "upper" not in data else {}
    try:
        checked = SpecSettings.model_validate(implied | data)
    except ValidationError as e:
        raise spec_error(e) from None
    return {key: getattr(checked, key) for key in data}
