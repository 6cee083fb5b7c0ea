"""``NAME.overlay`` files: overlays an admin declares, for overlayd@NAME.service and for
overlays that come up at boot (``boot = true``, through overlayd-generator).

TOML with the settings of the bus spec (the same validators, see model.SpecSettings)
plus what only a unit needs: ``on_stop`` and ``boot``. The name is the file's name, as
for systemd's own files. The first of ``/etc/overlayd``, ``/run/overlayd`` and
``/usr/lib/overlayd`` that has ``NAME.overlay`` wins: the admin's copy masks the
vendor's.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from overlayd.config import UnreadableToml, read_toml
from overlayd.errors import InvalidSpec, NoSuchOverlay
from overlayd.model import MergeEngine, OverlaySpec, SpecSettings, UpperKind, check_name, spec_error
from overlayd.places import SEARCH_PATH as SEARCH_PATH  # re-exported
from overlayd.places import SUFFIX as SUFFIX


class OverlayFile(SpecSettings):
    """One ``.overlay`` file. Unknown keys are refused, as on the bus."""

    image: str = Field(  # required here; optional on the bus
        description="Absolute path of the image file, block device or directory used read-only.")
    on_stop: Literal["discard", "commit"] = Field(
        default="discard",
        description="What 'systemctl stop overlayd@NAME' does with the writes: throw them "
                    "away (discard) or merge them into the image first (commit).")
    boot: bool = Field(
        default=False,
        description="Bring the overlay up at boot from mount units made by overlayd-generator, "
                    "before and without the daemon, which adopts it when it starts. The "
                    "image must be a file or a block device.")

    @model_validator(mode="after")
    def _boot_on_tmpfs(self) -> OverlayFile:
        # a boot overlay is made by mount units, which cannot hot-add a zram device
        if self.boot and self.upper is not UpperKind.TMPFS:
            raise ValueError("a boot overlay (boot = true) keeps its writes on a tmpfs; "
                             "upper = 'zram' needs the daemon (boot = false)")
        # its image is mounted by a mount unit, which would need the partition's offset
        # read from the table at generator time: the daemon reads it (boot = false)
        if self.boot and self.partition is not None:
            raise ValueError("a boot overlay (boot = true) uses the whole image; 'partition' "
                             "needs the daemon (boot = false)")
        # and merged by overlayfs: its mount units are kernel mounts, with no server
        if self.boot and self.engine is not MergeEngine.KERNEL:
            raise ValueError("a boot overlay (boot = true) is merged by the kernel's "
                             "overlayfs; engine = 'fuse' needs the daemon (boot = false)")
        return self

    def spec(self, name: str) -> OverlaySpec:
        settings = self.model_dump(exclude={"on_stop", "boot"})
        return OverlaySpec(name=name, **settings)


def find(name: str, search_path: Sequence[Path] = SEARCH_PATH) -> Path:
    """The file that defines overlay NAME, or NoSuchOverlay saying where we looked."""
    check_file_name(name)
    for d in search_path:
        path = d / (name + SUFFIX)
        if is_masked(path):
            raise NoSuchOverlay(name, f"Overlay '{name}' is masked ('{path}' is a link to "
                                      "/dev/null).")
        if path.is_file():
            return path
    where = ", ".join(str(d) for d in search_path)
    raise NoSuchOverlay(name, f"No file '{name}{SUFFIX}' defines overlay '{name}' "
                              f"(looked in {where}).")


def is_masked(path: Path) -> bool:
    """systemd's convention: a link to /dev/null hides the files of that name further down
    the search path."""
    return path.is_symlink() and os.path.realpath(path) == "/dev/null"


def check_file_name(name: str) -> str:
    try:
        return check_name(name)
    except ValueError as e:
        raise InvalidSpec(f"Invalid overlay name: {e}.", field="name") from None


def load(path: Path) -> OverlayFile:
    """Parse and check PATH; InvalidSpec names the file and the setting that is wrong."""
    try:
        data: dict[str, Any] = read_toml(path)
    except tomllib.TOMLDecodeError as e:
        raise InvalidSpec(f"'{path}' is not valid TOML: {e}.") from None
    except UnreadableToml as e:
        raise InvalidSpec(f"Cannot read '{path}': {e}.") from None
    except OSError as e:
        raise InvalidSpec(f"Cannot read '{path}': {e.strerror}.") from None
    try:
        parsed = OverlayFile.model_validate(data)
    except ValidationError as e:
        err = spec_error(e)
        if err.field and err.field not in OverlayFile.model_fields:
            known = ", ".join(OverlayFile.model_fields)
            err = InvalidSpec(f"Unknown setting '{err.field}'; the known settings are {known}.",
                              field=err.field)
        raise InvalidSpec(f"{path}: {err}", field=err.field) from None
    return parsed


def load_named(name: str, search_path: Sequence[Path] = SEARCH_PATH) -> tuple[Path, OverlayFile]:
    path = find(name, search_path)
    return path, load(path)


def all_files(search_path: Sequence[Path] = SEARCH_PATH) -> dict[str, Path]:
    """Every NAME.overlay on the search path, the first of each name (masking the rest)."""
    found: dict[str, Path] = {}
    masked: set[str] = set()
    for d in search_path:
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for p in entries:
            name = p.name.removesuffix(SUFFIX)
            if p.name.endswith(SUFFIX) and name not in found and name not in masked:
                if is_masked(p):
                    masked.add(name)
                elif p.is_file():
                    found[name] = p
    return found


def load_boot(search_path: Sequence[Path] = SEARCH_PATH
              ) -> tuple[dict[str, tuple[Path, OverlayFile]], list[str]]:
    """The files with boot = true, by name; and why each bad file was skipped."""
    found: dict[str, tuple[Path, OverlayFile]] = {}
    problems: list[str] = []
    for name, path in sorted(all_files(search_path).items()):
        try:
            check_file_name(name)
            spec_file = load(path)
        except InvalidSpec as e:
            problems.append(f"skipping '{path}': {e}")
            continue
        if spec_file.boot:
            found[name] = (path, spec_file)
    return found, problems


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the file format, from the model (shipped as
    packaging/overlay.schema.json; a test keeps the two identical)."""
    schema = OverlayFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://overlayd.org/schemas/overlay-1.json"
    schema["title"] = "overlayd .overlay file"
    # The model stores bytes; the file may also say '512M'.
    size = schema["properties"]["size"]
    size["anyOf"] = [{"type": "integer", "minimum": 1},
                     {"type": "string",
                      "pattern": r"^\s*\d+(\.\d+)?\s*[KMGTkmgt]?([iI]?[bB])?\s*$"},
                     {"type": "null"}]
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
