"""Mount units for a boot overlay, rendered from its ``.overlay`` file.

Pure text: the templates in overlayd/templates/ filled from the same model the bus uses.
``overlayctl render NAME`` prints them; ``overlayd-generator`` writes them at boot. The
three layers are the image (read-only, through a loop device that mount(8) sets up),
the tmpfs and the overlay; overlayd-prepare@NAME.service makes the upper and work
directories between the second and the third.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from overlayd.checks import check_outside_runtime_dir, choose_size
from overlayd.config import DaemonConfig
from overlayd.errors import InvalidSpec
from overlayd.layout import Layout, mount_source
from overlayd.model import MergeEngine, UpperKind, format_size
from overlayd.overlayfile import OverlayFile
from overlayd.overlayfs import PINNED

# Package data (overlayd/templates/): in a source tree, a wheel, the .deb's private site.
_TEMPLATE_DIRS = (Path(__file__).parent / "templates",)
_UNIT_SAFE = frozenset(string.ascii_letters + string.digits + ":_.")


def escape(text: str) -> str:
    """systemd-escape TEXT (for unit-name instances)."""
    out = []
    for i, ch in enumerate(text):
        if ch == "/":
            out.append("-")
        elif ch in _UNIT_SAFE and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def escape_path(path: str) -> str:
    """systemd-escape --path PATH: the name of the mount unit for PATH, without '.mount'."""
    trimmed = "/".join(p for p in path.split("/") if p)
    if any(p in (".", "..") for p in trimmed.split("/")):
        raise InvalidSpec(f"The path '{path}' has '.' or '..' in it; give it normalized.")
    return escape(trimmed) if trimmed else "-"


def mount_unit(path: str) -> str:
    return escape_path(path) + ".mount"


def prepare_unit(name: str) -> str:
    return f"overlayd-prepare@{escape(name)}.service"


def _template(file_name: str) -> str:
    for d in _TEMPLATE_DIRS:
        if (d / file_name).is_file():
            return (d / file_name).read_text()
    raise FileNotFoundError(f"the mount-unit template {file_name} is not installed")


def _fill(text: str, values: dict[str, str]) -> str:
    out = []
    for line in text.splitlines():
        key = line.strip()
        if key.startswith("@") and key.endswith("@") and values.get(key.strip("@")) == "":
            continue  # a line that is only a placeholder with nothing to say
        for k, v in values.items():
            line = line.replace(f"@{k}@", v)
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class RenderedUnits:
    lower: tuple[str, str]  # (unit name, text)
    tmpfs: tuple[str, str]
    overlay: tuple[str, str]

    # on_stop = "commit": a drop-in for overlayd@NAME.service (its path under the unit
    # directory, and its text) that orders it after the three mounts, so that at shutdown
    # it stops (commits, then discards) before any of them is unmounted.
    on_stop: tuple[str, str] | None = None
    # The layer files above the image (issue 14), lowest first: one mount unit each.
    layers: tuple[tuple[str, str], ...] = ()

    def all(self) -> list[tuple[str, str]]:
        return [self.lower, *self.layers, self.tmpfs, self.overlay]


def instance_unit(name: str) -> str:
    return f"overlayd@{escape(name)}.service"


def on_stop_dropin(name: str, source: Path, mounts: list[str], made_by: str) -> str:
    """The drop-in that ties overlayd@NAME.service to boot overlay NAME's mount units."""
    return "\n".join([
        f"# overlayd boot overlay {name}: on_stop = \"commit\" at shutdown.",
        f"# Made by {made_by} from {source}. overlayd@{name} comes up with the",
        "# overlay (it finds it adopted); being ordered after its three mounts, it is stopped",
        "# before them at shutdown, and its stop commits the writes into the image.",
        "[Unit]",
        f"Wants={mounts[-1]}",
        f"After={' '.join(mounts)}",
        "",
    ])


def check_unit_value(value: str, what: str) -> str:
    """A value that goes into a unit file verbatim: one line, no specifier surprises."""
    if any(c in value for c in "\n\r\\%") or value != value.strip():
        raise InvalidSpec(f"The {what} '{value[:200]}' cannot go into a mount unit: it has a "
                          "line break, a backslash, a '%' or surrounding spaces.")
    return value


def check_boot_mountpoint(path: str, cfg: DaemonConfig) -> None:
    """The checks of Create that need no live system (the rest, such as nesting, would need
    the mount table, which a generator does not have)."""
    if path.rstrip("/") == "":
        raise InvalidSpec("The mount point of an overlay cannot be '/'.", "mountpoint")
    check_outside_runtime_dir(path, cfg)


def render(name: str, spec_file: OverlayFile, source: Path, cfg: DaemonConfig, memory: int,
           *, made_by: str = "overlayctl render") -> RenderedUnits:
    """The three mount units; MEMORY (bytes) bounds the tmpfs size as for Create."""
    spec = spec_file.spec(name)  # the same checks as Create on the bus
    if spec.partition is not None:  # mount(8) would need the offset, read from the table
        raise InvalidSpec(f"Overlay '{name}' uses a partition of its image; mount units "
                          "cannot be made for it (the daemon reads the partition table: "
                          "'overlayctl start' it).", "partition")
    # Mount units mount a tmpfs and the kernel's overlayfs; the rest needs the daemon (as
    # OverlayFile says for boot = true): rendered anyway, the units would ignore the key.
    if spec.engine is not MergeEngine.KERNEL:
        raise InvalidSpec(f"Overlay '{name}' uses engine '{spec.engine}'; mount units mount "
                          "the kernel's overlayfs, a FUSE server needs the daemon "
                          "('overlayctl start' it).", "engine")
    if spec.upper is not UpperKind.TMPFS:
        raise InvalidSpec(f"Overlay '{name}' keeps its writes in {spec.upper}; mount units "
                          "mount a tmpfs, a zram device needs the daemon ('overlayctl "
                          "start' it).", "upper")
    layout = Layout.for_overlay(cfg.runtime_dir, name)
    image = check_unit_value(spec.image or "", "image path")
    is_block = image.startswith("/dev/")  # else a file: mount(8) attaches a loop device
    mountpoint = check_unit_value(spec.mountpoint or cfg.default_mountpoint(name),
                                  "mount point")
    check_boot_mountpoint(mountpoint, cfg)
    size = choose_size(spec, cfg, memory)
    layer_mounts = [str(layout.layer_mount(i)) for i in range(len(spec.layers))]
    lowerdirs = ":".join([*reversed(layer_mounts), str(layout.lower)])  # top first
    overlay_opts = [f"lowerdir={lowerdirs}", f"upperdir={layout.upper}",
                    f"workdir={layout.work}", *(f"{k}={v}" for k, v in PINNED),
                    *spec.mount_options]
    values = {
        "NAME": name, "MADE_BY": made_by, "SOURCE": str(source), "IMAGE": image,
        # quoted: this setting takes a list, and the path may have spaces
        "IMAGE_DEPS": "" if is_block else f'RequiresMountsFor="{image}"',
        "LOWER": str(layout.lower), "TMPFS": str(layout.upper_mount),
        "TYPE_LINE": f"Type={spec.fstype}" if spec.fstype else "",
        "LOWER_OPTIONS": "ro" if is_block else "ro,loop",
        "SOURCE_TAG": mount_source(name), "SIZE": str(size), "SIZE_TEXT": format_size(size),
        "PREPARE_UNIT": prepare_unit(name), "MOUNTPOINT": mountpoint,
        "OVERLAY_OPTIONS": ",".join(overlay_opts),
        "LAYER_DEPS": "RequiresMountsFor=" + " ".join(f'"{m}"' for m in layer_mounts)
        if layer_mounts else "",
    }
    layers = []
    for i, path in enumerate(spec.layers):
        check_unit_value(path, "layer path")
        layers.append((mount_unit(layer_mounts[i]), _fill(_template("overlay-layer.mount.in"), {
            **values, "INDEX": str(i + 1), "LAYER": path, "LAYER_MOUNT": layer_mounts[i]})))
    mounts = [mount_unit(str(layout.lower)), mount_unit(str(layout.upper_mount)),
              *(mount_unit(m) for m in layer_mounts), mount_unit(mountpoint)]
    on_stop = None
    if spec_file.on_stop == "commit":
        on_stop = (f"{instance_unit(name)}.d/50-boot-overlay.conf",
                   on_stop_dropin(name, source, mounts, made_by))
    return RenderedUnits(
        lower=(mounts[0], _fill(_template("overlay-lower.mount.in"), values)),
        tmpfs=(mounts[1], _fill(_template("overlay-rw.mount.in"), values)),
        overlay=(mounts[-1], _fill(_template("overlay.mount.in"), values)),
        on_stop=on_stop, layers=tuple(layers),
    )
