"""The daemon's configuration: what the admin owns, never the caller.

Read from ``/etc/overlayd/overlayd.conf`` and its drop-ins
``/etc/overlayd/overlayd.conf.d/*.conf`` (TOML, later files win, key by key).
Every field has a default, so no file is needed.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from overlayd.errors import InvalidSpec
from overlayd.model import MIN_SIZE, check_size, format_size, parse_size
from overlayd.places import DEFAULT_CONFIG as DEFAULT_CONFIG  # re-exported


class DaemonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime_dir: Path = Field(
        default=Path("/run/overlayd"),
        description="State records and per-overlay layers; never /tmp (cleaners delete uppers).",
    )
    mount_root: Path | None = Field(
        default=None, description="Where default mount points go; RUNTIME_DIR/mnt if unset."
    )
    default_size: int = Field(default=1 << 30, description="tmpfs size when a spec gives none.")
    max_size: int = Field(
        default=0, description="Largest tmpfs size a caller may ask for; 0 means physical memory."
    )
    max_overlays: int = Field(default=1024, ge=1)
    max_total_size: str = Field(
        default="50%",
        description="Most RAM all overlays together may reserve for their writes: the sum "
                    "of their sizes (a tmpfs's size, a zram device's disksize), as a size "
                    "('12G') or a percent of physical memory ('50%', as tmpfs' default).",
    )
    user_mount_roots: tuple[str, ...] = Field(
        default=("/media/$USER",),
        description="Besides the mount root, where non-root callers may mount overlays "
                    "($USER is the caller's user name).",
    )

    usage_high: int = Field(
        default=80, ge=1, le=100,
        description="Percent of an overlay's RAM in use from which its UpperUsage is 'high'.",
    )
    usage_critical: int = Field(
        default=95, ge=1, le=100,
        description="Percent of an overlay's RAM in use from which its UpperUsage is "
                    "'critical' ('full' is when no block is left).",
    )
    usage_interval: float = Field(
        default=2.0, ge=0.1, le=3600,
        description="Seconds between two looks at the usage of every live overlay (one "
                    "statvfs each).",
    )
    layer_dir: Path = Field(
        default=Path("/var/lib/overlayd/layers"),
        description="Where a commit to a layer stores its layer files, in LAYER_DIR/NAME/.",
    )
    max_layers: int = Field(
        default=32, ge=1, le=498,
        description="Most layer files an overlay may stack above its image (the kernel "
                    "allows 500 lower layers in all).",
    )

    def layers_of(self, name: str) -> Path:
        return self.layer_dir / name

    @model_validator(mode="after")
    def _usage_order(self) -> DaemonConfig:
        if self.usage_high > self.usage_critical:
            raise ValueError(f"usage_high ({self.usage_high}) must not be above "
                             f"usage_critical ({self.usage_critical})")
        return self

    @field_validator("default_size", mode="before")
    @classmethod
    def _default_size(cls, v: Any) -> int:
        n = check_size(parse_size(v), "default_size")
        if n < MIN_SIZE:
            raise ValueError(f"default_size must be at least {format_size(MIN_SIZE)}")
        return n

    @field_validator("max_size", mode="before")
    @classmethod
    def _max_size(cls, v: Any) -> int:
        return check_size(parse_size(v), "max_size", allow_zero=True)

    @field_validator("max_total_size", mode="before")
    @classmethod
    def _max_total_size(cls, v: Any) -> str:
        if isinstance(v, str) and v.strip().endswith("%"):
            digits = v.strip()[:-1].strip()
            if not digits.isdigit() or not 1 <= int(digits) <= 1000:
                raise ValueError("a percent of physical memory is a whole number from 1% "
                                 "to 1000%")
            return f"{int(digits)}%"
        n = check_size(parse_size(v), "max_total_size")
        if n < MIN_SIZE:
            raise ValueError(f"max_total_size must be at least {format_size(MIN_SIZE)}")
        return str(n)

    def total_limit(self, memory: int) -> int:
        """max_total_size in bytes on a machine of MEMORY bytes (MemTotal)."""
        if self.max_total_size.endswith("%"):
            return memory * int(self.max_total_size[:-1]) // 100
        return int(self.max_total_size)

    @property
    def mount_root_dir(self) -> Path:
        return self.mount_root if self.mount_root is not None else self.runtime_dir / "mnt"

    def default_mountpoint(self, name: str) -> str:
        return str(self.mount_root_dir / name)


# Settings a running daemon cannot take on (SIGHUP, systemctl reload overlayd): where its
# records, default mount points and layer files are is what it found its overlays by.
RESTART_ONLY = ("runtime_dir", "mount_root", "layer_dir")


def reloaded(old: DaemonConfig, new: DaemonConfig) -> tuple[DaemonConfig, list[str]]:
    """The configuration a reload leaves in force: NEW, but the RESTART_ONLY settings as
    in OLD; and the names of those that NEW changes (they wait for a restart)."""
    kept = [k for k in RESTART_ONLY if getattr(old, k) != getattr(new, k)]
    return new.model_copy(update={k: getattr(old, k) for k in kept}), kept


def differences(old: DaemonConfig, new: DaemonConfig) -> list[str]:
    """The names of the settings that differ between OLD and NEW."""
    return [k for k in DaemonConfig.model_fields if getattr(old, k) != getattr(new, k)]


MAX_TOML_BYTES = 1 << 20  # a configuration or .overlay file is a few lines


class UnreadableToml(ValueError):
    """A file that is no TOML text to read: its message says why."""


def read_toml(path: Path | str) -> dict[str, Any]:
    """PATH's TOML, from a regular file of UTF-8 text of at most 1 MiB. Opened without
    blocking and looked at before reading: a FIFO would hang the reader and /dev/zero fill
    its memory (found by hand: a drop-in linked to /dev/zero grew the daemon to 12 GB on
    SIGHUP), and bytes that are not UTF-8 were tomllib's UnicodeDecodeError, a traceback.
    UnreadableToml, tomllib.TOMLDecodeError or OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnreadableToml("it is a directory" if stat.S_ISDIR(mode)
                             else "it is not a regular file")
    with open(fd, "rb") as fh:
        data = fh.read(MAX_TOML_BYTES + 1)
    if len(data) > MAX_TOML_BYTES:
        raise UnreadableToml("it is larger than 1 MiB")
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise UnreadableToml(f"it is not UTF-8 text (byte {e.start})") from None
    return tomllib.loads(text)


def load_config(path: Path = DEFAULT_CONFIG, **overrides: Any) -> DaemonConfig:
    """Merge PATH and PATH.d/*.conf (sorted), then OVERRIDES; a missing file is fine."""
    data: dict[str, Any] = {}
    origin: dict[str, Path] = {}  # the file each key was last set in
    files = [path, *sorted(Path(str(path) + ".d").glob("*.conf"))]
    for f in files:
        try:
            read = read_toml(f)
            data.update(read)
            origin.update(dict.fromkeys(read, f))
        except FileNotFoundError:
            continue
        except (tomllib.TOMLDecodeError, UnreadableToml) as e:
            raise InvalidSpec(f"Cannot read the configuration file '{f}': {e}.") from None
        except OSError as e:
            raise InvalidSpec(f"Cannot read the configuration file '{f}': "
                              f"{e.strerror or e}.") from None
    data.update(overrides)
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if not key:  # a rule between settings
            raise InvalidSpec(f"Invalid configuration: {msg}.") from None
        top = str(first["loc"][0])
        where = f"'{origin[top]}'" if top in origin else "the configuration"
        if first["type"] == "extra_forbidden":
            valid = ", ".join(DaemonConfig.model_fields)
            raise InvalidSpec(f"Unknown setting '{key}' in {where}; the valid settings are: "
                              f"{valid}.") from None
        raise InvalidSpec(f"Invalid setting '{key}' in {where}: {msg}.") from None
