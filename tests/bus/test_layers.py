"""Commit to a layer over the bus (issue 14): Commit's options target and layer_format,
the Layers and StackDepth properties, overlayctl commit --target layer and overlayctl
layers, the spec key layers. A daemon of its own, whose layer directory is the test's."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers
from tests.bus.conftest import Daemon, start_daemon, stop_daemon


@pytest.fixture
def layered(root: Path) -> Iterator[Daemon]:
    from tests.conftest import kernel_unavailable

    if kernel_unavailable():
        pytest.skip(kernel_unavailable() or "")
    conf = root / "overlayd.conf"
    conf.write_text(f'layer_dir = "{root / "layers"}"\nmax_layers = 2\n')
    d = start_daemon(root, "--discard-on-exit", "--config", str(conf))
    try:
        yield d
    finally:
        d.discard_all()
        log = stop_daemon(d)
        assert "Traceback" not in log, log


def prop(d: Daemon, path: str, name: str) -> str:
    r = d.run("busctl", "--system", "get-property", "org.overlayd.Overlayd1", path,
              "org.overlayd.Overlayd1.Overlay", name)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_commit_to_a_layer_over_the_bus(layered: Daemon, root: Path) -> None:
    img = helpers.make_image(root / "disk.img")
    path = layered.create("lay", img)
    mp = Path(f"{layered.runtime}/mnt/lay")
    (mp / "one.txt").write_text("one\n")
    assert prop(layered, path, "Layers") == "as 0"
    assert prop(layered, path, "StackDepth") == "u 1"

    r = layered.call("Commit", "sa{sv}", "lay", "1", "target", "s", "nowhere")
    assert r.returncode != 0 and "Invalid 'target'" in r.stderr  # InvalidSpec
    r = layered.call("Commit", "sa{sv}", "lay", "1", "target", "b", "true")
    assert r.returncode != 0 and "must be of type 's'" in r.stderr  # InvalidArgs

    r = layered.ctl("commit", "lay", "--target", "layer")
    assert r.returncode == 0, r.stderr
    layer = root / "layers" / "lay" / "0001.erofs"
    assert prop(layered, path, "Layers") == f'as 1 "{layer}"'
    assert prop(layered, path, "StackDepth") == "u 2"
    assert (mp / "one.txt").read_text() == "one\n"
    r = layered.ctl("layers", "lay")
    assert r.returncode == 0 and str(layer) in r.stdout and "image" in r.stdout, r.stderr
    out = json.loads(layered.ctl("layers", "lay", "--json").stdout)
    assert out["layers"] == [str(layer)] and out["stack_depth"] == 2

    (mp / "two.txt").write_text("two\n")
    r = layered.call("StartCommit", "sa{sv}", "lay", "2", "target", "s", "layer",
                     "layer_format", "s", "squashfs")
    assert r.returncode == 0, r.stderr
    helpers.wait_for(lambda: prop(layered, path, "StackDepth") == "u 3", what="the job")
    # max_layers = 2: a third is refused before anything changes.
    (mp / "three.txt").write_text("three\n")
    r = layered.ctl("commit", "lay")  # with layers, the default target is a layer
    assert r.returncode == 1 and "max_layers" in r.stderr, r.stderr
    assert (mp / "three.txt").read_text() == "three\n"
    layered.call("Discard", "sa{sv}", "lay", "0")

    # Create again over image + layers (the spec key, lowest first).
    second = root / "layers" / "lay" / "0002.sqfs"
    r = layered.call("Create", "sa{sv}", "again", "2", "image", "s", str(img),
                     "layers", "as", "2", str(layer), str(second))
    assert r.returncode == 0, r.stderr
    mp2 = Path(f"{layered.runtime}/mnt/again")
    assert {"one.txt", "two.txt"} <= set(os.listdir(mp2))
    assert not (mp2 / "three.txt").exists()
    r = layered.call("Create", "sa{sv}", "bad", "2", "image", "s", str(img),
                     "layers", "as", "1", str(img))
    assert r.returncode != 0 and "not an erofs or squashfs image" in r.stderr


def test_squash_as_a_job_and_revert(layered: Daemon, root: Path) -> None:
    img = helpers.make_image(root / "disk.img")
    path = layered.create("sq", img)
    mp = Path(f"{layered.runtime}/mnt/sq")
    for i in range(2):
        (mp / f"f{i}").write_text(f"{i}\n")
        assert layered.ctl("commit", "sq", "--target", "layer").returncode == 0
    r = layered.call("Squash", "sa{sv}", "sq", "1", "target", "s", "nowhere")
    assert r.returncode != 0 and "Invalid 'target'" in r.stderr
    (mp / "ram").write_text("kept in RAM\n")
    r = layered.call("Squash", "sa{sv}", "sq", "0")
    assert r.returncode == 0, r.stderr
    assert prop(layered, path, "StackDepth") == "u 2"
    assert sorted(p.name for p in mp.iterdir() if p.name != "lost+found") == \
        ["f0", "f1", "ram"]
    r = layered.call("Revert", "sa{sv}", "sq", "0")
    assert r.returncode != 0 and "commit them first" in r.stderr
    r = layered.call("Revert", "sa{sv}", "sq", "1", "discard", "b", "true")
    assert r.returncode == 0, r.stderr
    assert prop(layered, path, "Layers") == "as 0"
    assert sorted(p.name for p in mp.iterdir() if p.name != "lost+found") == []
    assert os.listdir(root / "layers" / "sq") == [], "the layer files overlayd made are gone"
    # Squash into the image in place: the stack goes into the image, the view stays.
    (mp / "into-image").write_text("x\n")
    assert layered.ctl("commit", "sq", "--target", "layer").returncode == 0
    r = layered.call("Squash", "sa{sv}", "sq", "1", "target", "s", "image")
    assert r.returncode == 0, r.stderr
    assert prop(layered, path, "Layers") == "as 0"
    assert (mp / "into-image").read_text() == "x\n"
    assert helpers.sha256(img) != "", "the image was written"
