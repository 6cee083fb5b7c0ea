"""overlayctl layers, and commit's --target/--layer-format (issue 14): the layer files an
overlay stacks above its image."""

from __future__ import annotations

import argparse
import os

from overlayd.bus.wire import ClientReads
from overlayd.cli.common import Command, did, say
from overlayd.sizes import format_size


def add_commit_options(p: argparse.ArgumentParser) -> None:
    """commit's options: where the writes go."""
    p.add_argument("--target", choices=("image", "layer"),
                   help="image: merge into the image (the default unless the overlay stacks "
                        "layers); layer: write a new layer file and stack it")
    p.add_argument("--layer-format", choices=("erofs", "squashfs"),
                   help="the layer's file system (default erofs; squashfs keeps whole seconds "
                        "of mtime and no ACLs)")


async def cmd_layers(client: ClientReads, args: argparse.Namespace) -> int:
    """The stack, top first, as overlayfs sees it: the upper, the layer files, the image."""
    p = await client.properties(await client.path_of(args.name))
    layers = list(p["Layers"])
    did(args, name=args.name, image=p["Image"], layers=layers, stack_depth=p["StackDepth"])
    say(args, f"Overlay '{args.name}': {len(layers)} layer file(s) above the image, "
              f"{p['StackDepth']} lower layers in all.")
    say(args, f"  upper  RAM, {format_size(p['UpperUsed'])} used")
    for i, path in reversed(list(enumerate(layers, 1))):
        try:
            size = format_size(os.stat(path).st_size)
        except OSError:
            size = "?"
        say(args, f"  {i:>5}  {path} ({size})")
    say(args, f"  image  {p['Image']}")
    return 0


def _layers_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")


COMMANDS = (
    Command("layers", "the layer files an overlay stacks above its image", reads=cmd_layers,
            arguments=_layers_args),
)
