"""What an overlay is: the caller's spec, the daemon's record, and their states.

Pure pydantic models; no I/O. ``parse_spec`` turns a dict (from the bus, a TOML
file or the CLI) into an ``OverlaySpec`` or raises ``InvalidSpec`` with a
sentence that names the field.
"""

from __future__ import annotations

import enum
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from overlayd.errors import InvalidSpec
from overlayd.sizes import MAX_U64 as MAX_U64  # re-exported: sizes moved to overlayd.sizes
from overlayd.sizes import MIN_SIZE as MIN_SIZE
from overlayd.sizes import format_size as format_size
from overlayd.sizes import parse_size as parse_size

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = (
    "a name is 1 to 64 characters of letters, digits, '_', '.' and '-', "
    "and does not start with '.' or '-'"
)
# Directories of the daemon's own that sit beside the per-overlay directories.
RESERVED_NAMES = frozenset({"mnt"})

# File systems overlayd mounts as a lower layer (and detects from the superblock).
SUPPORTED_FSTYPES = ("ext2", "ext3", "ext4", "squashfs", "erofs", "iso9660", "xfs", "btrfs")

# Mount options a caller may ask for on the merged mount (udisks-style allow-list).
ALLOWED_MOUNT_OPTIONS = (
    "ro", "rw", "nosuid", "nodev", "noexec", "noatime", "relatime", "strictatime", "nodiratime",
)



def check_size(n: int, what: str, *, allow_zero: bool = False) -> int:
    if n < 0 or (n == 0 and not allow_zero):
        raise ValueError(f"{what} must be more than 0 bytes")
    if n > MAX_U64:
        raise ValueError(f"{what} does not fit in 64 bits")
    return n


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name)[:80]
        raise ValueError(f"{NAME_RULE} (got {shown})")
    if name in RESERVED_NAMES:
        raise ValueError(f"'{name}' is reserved for overlayd's own directories; "
                         "choose another name")
    return name


MAX_PARTITION = 65535
GPT_LABEL_CHARS = 36  # a GPT partition name is 36 UTF-16 code units


def check_partition(v: Any) -> int | str | None:
    """A partition number (int >= 1) or a GPT label (a non-empty string); as asked."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError("a partition is a number (1, 2, ...) or a GPT partition label")
    if isinstance(v, int):
        if v < 1:
            raise ValueError(f"partition numbers start at 1 (got {v})")
        if v > MAX_PARTITION:
            raise ValueError(f"partition numbers go up to {MAX_PARTITION} (got {v})")
        return v
    if not v or "\0" in v or len(v.encode("utf-16-le")) > 2 * GPT_LABEL_CHARS:
        raise ValueError(f"a GPT partition label is 1 to {GPT_LABEL_CHARS} characters "
                         f"(got {v[:40]!r})")
    return v


def show_partition(p: int | str | None) -> str:
    """How a person is shown the partition asked for: 2, or 'rootfs'."""
    return "" if p is None else str(p) if isinstance(p, int) else repr(p)


def _check_abs_path(value: str, what: str) -> str:
    if "\0" in value:
        raise ValueError(f"the {what} path contains a NUL character")
    if not value.startswith("/"):
        raise ValueError(f"the {what} must be an absolute path (got '{value[:200]}')")
    if len(value) > 4000:
        raise ValueError(f"the {what} path is longer than 4000 characters")
    return value


class UpperKind(enum.StrEnum):
    """Where the writes live; the seam is host.ports.UpperBackend."""

    TMPFS = "tmpfs"  # a size-limited tmpfs
    ZRAM = "zram"  # a file system on a hot-added compressed RAM block device


class MergeEngine(enum.StrEnum):
    """What merges the layers; the seam is host.ports.MergeMount."""

    KERNEL = "kernel"  # overlayfs in the kernel
    FUSE = "fuse"  # fuse-overlayfs, a FUSE server process (Debian's package)


class SpecSettings(BaseModel):
    """The settings an overlay is made from, shared by the bus spec (OverlaySpec) and the
    ``.overlay`` files of overlayd@.service (OverlayFile): one set of rules for both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = Field(
        default=None,
        description="Absolute path of the image file, block device or directory used read-only.",
    )
    fstype: str | None = Field(
        default=None, description="File system of the image; detected from its superblock if unset."
    )
    mountpoint: str | None = Field(
        default=None, description="Where the merged view appears; default /run/overlayd/mnt/NAME."
    )
    size: int | None = Field(
        default=None, description="Limit of the RAM (tmpfs) that takes the writes, in bytes or "
                                  "as a string such as '512M' or '2G'; default from overlayd.conf.",
    )
    mount_options: tuple[str, ...] = Field(
        default=(), description="Options of the merged mount: " + ", ".join(ALLOWED_MOUNT_OPTIONS)
    )
    layers: tuple[str, ...] = Field(
        default=(), description="Layer files (erofs or squashfs, e.g. made by a commit to a "
                                "layer) stacked above the image, lowest first.",
    )

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        return check_layer_paths(v)
    upper: UpperKind = Field(
        default=UpperKind.TMPFS,
        description="Where the writes live: 'tmpfs' (default) or 'zram' (compressed RAM: a "
                    "hot-added zram device with ext4 on it, without a journal).",
    )
    engine: MergeEngine = Field(
        default=MergeEngine.KERNEL,
        description="What merges the layers: 'kernel' (default, overlayfs) or 'fuse' "
                    "(fuse-overlayfs, a server process; where the kernel has no overlayfs).",
    )
    compressor: str | None = Field(
        default=None, description="zram only: the compression algorithm (one of "
                                  "/sys/block/zramN/comp_algorithm); default the kernel's.",
    )
    partition: int | str | None = Field(
        default=None, description="For a partitioned image (MBR or GPT: a Raspberry Pi .img, "
                                  "a VM's raw disk): the partition to use, by number (1-4 "
                                  "primary, 5 and up logical) or by GPT partition label.",
    )

    @field_validator("partition", mode="before")
    @classmethod
    def _partition(cls, v: Any) -> Any:
        return check_partition(v)

    @field_validator("compressor")
    @classmethod
    def _compressor(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9-]{1,32}", v):
            raise ValueError(f"compressor '{v[:40]}' is not a compression algorithm's name")
        return v

    @model_validator(mode="after")
    def _compressor_for_zram(self) -> SpecSettings:
        if self.compressor is not None and self.upper is not UpperKind.ZRAM:
            raise ValueError("'compressor' applies only to upper = 'zram'")
        return self

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return None if v is None else _check_abs_path(v, "image")

    @field_validator("mountpoint")
    @classmethod
    def _mountpoint(cls, v: str | None) -> str | None:
        return None if v is None else _check_abs_path(v, "mount point")

    @field_validator("fstype")
    @classmethod
    def _fstype(cls, v: str | None) -> str | None:
        if v is not None and v not in SUPPORTED_FSTYPES:
            raise ValueError(
                f"file system type '{v[:40]}' is not supported; use one of "
                + ", ".join(SUPPORTED_FSTYPES)
                + " or leave it out to detect it"
            )
        return v

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v is None:
            return None
        n = check_size(parse_size(v), "the size of the RAM for writes")
        if n < MIN_SIZE:
            raise ValueError(f"the size of the RAM for writes must be at least "
                             f"{format_size(MIN_SIZE)} (got {format_size(n)})")
        return n

    @field_validator("mount_options", mode="before")
    @classmethod
    def _options(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [o for o in v.split(",") if o]
        if isinstance(v, list | tuple):
            bad = [o for o in v if o not in ALLOWED_MOUNT_OPTIONS]
            if bad:
                raise ValueError(
                    f"mount option '{str(bad[0])[:40]}' is not allowed; allowed are "
                    + ", ".join(ALLOWED_MOUNT_OPTIONS)
                )
            if "ro" in v and "rw" in v:
                raise ValueError("mount options 'ro' and 'rw' contradict each other")
            return tuple(dict.fromkeys(v))
        raise ValueError("mount options are a list of strings such as ['nosuid', 'nodev']")


class OverlaySpec(SpecSettings):
    """What a caller asks for. Keys are the field names (snake_case); unknown keys are refused."""

    name: str = Field(description="The overlay's name; " + NAME_RULE + ".")
    image_fd: int | None = Field(
        default=None, description="An fd of the image that the caller opened (instead of image)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("image_fd")
    @classmethod
    def _image_fd(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise ValueError("the image fd must be an open file descriptor (got a negative number)")
        return v

    @model_validator(mode="after")
    def _one_image(self) -> OverlaySpec:
        if (self.image is None) == (self.image_fd is None):
            raise ValueError("give exactly one of 'image' (a path) and 'image_fd' (an open fd)")
        return self


class OverlayState(enum.StrEnum):
    CREATING = "creating"  # only in a state record, while Create runs
    ACTIVE = "active"
    COMMITTING = "committing"
    DISCARDING = "discarding"
    FAILED = "failed"
    # The merged view was unmounted from outside (umount, systemctl stop of its mount
    # unit); the writes are still in the upper. Commit (which remounts) or Discard.
    UNMOUNTED = "unmounted"


class LowerKind(enum.StrEnum):
    FILE = "file"  # an image file, attached to a loop device
    BLOCK = "block"  # a block device, mounted directly
    DIRECTORY = "directory"  # a directory, used as the lower as it is


class CommitPhase(enum.StrEnum):
    """How far a commit got, persisted at each checkpoint so recovery knows what the image
    holds: nothing yet, part of the writes, or all of them."""

    NONE = ""
    APPLYING = "applying"  # the image is open read-write and is being written
    APPLIED = "applied"  # every write reached the image; the upper is being renewed
    # A commit to a layer (engine/layercommit.py) is writing the record's PENDING_LAYER
    # file; until the record names it among its layers the writes are only in the upper.
    LAYERING = "layering"


_FROZEN = ConfigDict(extra="forbid", frozen=True)


class Lower(BaseModel):
    """One read-only layer under the overlay. Today an overlay has exactly one: the image.

    SHARED: the image is mounted once for every overlay of it (same dev and ino), at
    ``Layout.shared_lower(dev, ino)``; otherwise (records of version 2, boot overlays) at
    the overlay's own ``Layout.lower``."""

    model_config = _FROZEN

    kind: LowerKind
    image: str  # as the kernel resolved it when the overlay was made
    dev: int = 0  # the image's identity: a commit refuses an image replaced since
    ino: int = 0
    fstype: str = ""  # "" for a directory
    loop_device: str = ""
    shared: bool = False
    # One partition of a partitioned image: as asked (a number or a GPT label), and where
    # it lies (bytes): the loop device's lo_offset and lo_sizelimit. Absent otherwise.
    partition: int | str | None = None
    offset: int = 0
    sizelimit: int = 0

    @property
    def key(self) -> tuple[int, int]:
        """The image's identity: overlays with the same key read the same image file (its
        lock, the Create/Commit/Discard lock of its overlays)."""
        return (self.dev, self.ino)

    @property
    def partitioned(self) -> bool:
        """It reads one partition of the image, through a loop device of that part (a
        partition of a block device too)."""
        return self.partition is not None or self.offset != 0 or self.sizelimit != 0

    @property
    def window(self) -> tuple[int, int]:
        """The bytes of the image it reads: (offset, size), size 0 to the end."""
        return (self.offset, self.sizelimit)

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A record of a whole image stays as it was: the partition fields only when set."""
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items()
                if k not in ("partition", "offset", "sizelimit") or v}


class Upper(BaseModel):
    """Where the writes go."""

    model_config = _FROZEN

    kind: UpperKind = UpperKind.TMPFS
    size: int
    # zram: the block device this overlay hot-added ("/dev/zramN") and the UUID of the file
    # system on it: what recovery checks before it unmounts, resets or removes a device.
    device: str = ""
    fs_uuid: str = ""
    compressor: str = ""  # zram: as asked; "" for the kernel's default

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A tmpfs record stays as it was: the zram fields only when set."""
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items()
                if k not in ("device", "fs_uuid", "compressor") or v}


class Merged(BaseModel):
    """The overlay mount itself."""

    model_config = _FROZEN

    mountpoint: str
    created: bool = False  # overlayd made the directory (the default mount point)
    options: tuple[str, ...] = ()
    engine: MergeEngine = MergeEngine.KERNEL

    @model_serializer(mode="wrap")
    def _drop_default(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A kernel overlay's record stays as it was: the engine only when it is FUSE."""
        data: dict[str, Any] = handler(self)
        if self.engine is MergeEngine.KERNEL:
            data.pop("engine", None)
        return data


class LayerFormat(enum.StrEnum):
    """The file system of a layer file made by a commit to a layer."""

    EROFS = "erofs"  # exact: nanosecond mtimes, every xattr namespace (the default)
    SQUASHFS = "squashfs"  # smaller; mtimes in whole seconds, no ACLs (refused)


class CommitTarget(enum.StrEnum):
    IMAGE = "image"  # merge the writes into the image in place (engine/commit.py)
    LAYER = "layer"  # write them as a new read-only layer file (engine/layercommit.py)


class Layer(BaseModel):
    """A read-only layer file stacked between the image and the upper (issue 14): an erofs
    or squashfs image, attached to a read-only loop device and mounted at
    ``Layout.layer_mount(index)``. The record's ``layers`` are lowest first."""

    model_config = _FROZEN

    path: str
    dev: int = 0
    ino: int = 0
    fstype: str = ""
    loop_device: str = ""


def check_layer_paths(v: Any) -> Any:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list | tuple) or not all(isinstance(p, str) for p in v):
        raise ValueError("layers are a list of absolute paths of layer files, lowest first")
    for p in v:
        _check_abs_path(p, "layer")
    if len(set(v)) != len(v):
        raise ValueError("a layer file is listed twice")
    return tuple(v)


RECORD_VERSION = 4


class Overlay(BaseModel):
    """The daemon's record of one overlay, persisted in RUNTIME_DIR/NAME/overlay.json.

    A composition: an ordered list of lowers (the image at the bottom), one upper and the
    merged mount. Paths that ``Layout`` derives from the name are not stored. Frozen: the
    manager makes a new record for every change (``evolve``), so no worker thread ever
    changes what the registry holds.
    """

    model_config = _FROZEN

    version: int = RECORD_VERSION
    name: str
    state: OverlayState
    lowers: tuple[Lower, ...] = Field(min_length=1)
    upper: Upper
    merged: Merged
    owner_uid: int = 0
    created_usec: int = 0
    commit_phase: CommitPhase = CommitPhase.NONE
    # A commit was interrupted part-way: the image holds some of the writes (all of them
    # are still in the upper). Cleared by the next successful commit.
    half_committed: bool = False
    error: str = ""
    # Layer files between the image and the upper, lowest first (issue 14).
    layers: tuple[Layer, ...] = ()
    # The layer file a commit to a layer is writing (phase LAYERING): not in use yet.
    pending_layer: str = ""
    # Layer files overlayd made that a squash or revert took out of the stack: removed
    # next (by recovery if the daemon was killed first).
    retired_layers: tuple[str, ...] = ()

    def evolve(self, **changes: Any) -> Overlay:
        return self.model_copy(update=changes)

    # The bottom layer and the mount, as the bus and the log show them.
    @property
    def image(self) -> str:
        return self.lowers[0].image

    @property
    def image_kind(self) -> LowerKind:
        return self.lowers[0].kind

    @property
    def fstype(self) -> str:
        return self.lowers[0].fstype

    @property
    def loop_device(self) -> str:
        return self.lowers[0].loop_device

    @property
    def partition(self) -> str:
        """The partition of the image as asked: a number in decimal, or a GPT label; ""
        for a whole image, "@OFFSET" for one adopted from its loop device (what was asked
        is not known then)."""
        lower = self.lowers[0]
        if lower.partition is not None:
            return str(lower.partition)
        return f"@{lower.offset}" if lower.partitioned else ""

    @property
    def partition_offset(self) -> int:
        return self.lowers[0].offset

    @property
    def partition_size(self) -> int:
        return self.lowers[0].sizelimit

    @property
    def size(self) -> int:
        return self.upper.size

    @property
    def mountpoint(self) -> str:
        return self.merged.mountpoint

    @property
    def mount_options(self) -> tuple[str, ...]:
        return self.merged.options

    @property
    def engine(self) -> MergeEngine:
        return self.merged.engine


class UpperUsage(BaseModel):
    size: int
    used: int
    inodes_used: int
    # zram only (its mm_stat): the data stored, and the RAM it takes compressed; 0 for tmpfs
    original: int = 0
    compressed: int = 0


class DiffEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    kind: str  # added | modified | deleted | opaque | metadata


class CommitStats(BaseModel):
    entries: int = 0
    bytes: int = 0
    seconds: float = 0.0


def parse_spec(data: dict[str, Any]) -> OverlaySpec:
    """An OverlaySpec from a dict, or InvalidSpec naming the field that is wrong."""
    if not isinstance(data, dict):
        raise InvalidSpec("The overlay spec must be a dictionary of settings.")
    try:
        return OverlaySpec.model_validate(data)
    except ValidationError as e:
        raise spec_error(e) from None


def spec_error(e: ValidationError) -> InvalidSpec:
    first = e.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    kind = first["type"]
    msg = str(first["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        known = ", ".join(OverlaySpec.model_fields)
        text = f"Unknown setting '{field}'; the known settings are {known}."
    elif kind == "missing":
        text = f"The setting '{field}' is required."
    elif field is None:
        text = msg[0].upper() + msg[1:] + "."
        field = "image" if "'image'" in msg else None
    elif kind in ("string_type", "int_type", "int_parsing", "tuple_type", "list_type"):
        text = f"The setting '{field}' has the wrong type: {msg.lower()}."
    else:
        text = f"Invalid '{field}': {msg}."
    return InvalidSpec(text, field=field)
