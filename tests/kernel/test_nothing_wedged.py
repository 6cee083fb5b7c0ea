"""Issue "nothing lost, nothing wedged", on the real kernel: the daemon's own layers are no
image, replies name no file of the daemon's, and no state record, however damaged, stops
a start or costs another overlay."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from overlayd.errors import InvalidSpec, OverlayBusy, OverlaydError
from overlayd.host.mounttable import mount_at
from overlayd.model import parse_spec
from tests import helpers
from tests.kernel.conftest import Env
from tests.kernel.test_bad_input import assert_nothing_left, create_fails


@pytest.mark.parametrize("part", ["lower", "rw/upper", "rw", "", "."])
def test_the_daemons_own_layers_are_no_image(env: Env, image: Path, part: str) -> None:
    rec = env.create("p", image)
    inside = env.config.runtime_dir / "p" / part if part != "." else env.config.runtime_dir
    if part == "lower":  # the image mount, shared by the overlays of the image
        inside = Path(env.paths(rec).lower_dir)
    create_fails(env, {"name": "x", "image": str(inside)}, InvalidSpec, "runtime directory")
    env.run(env.manager.discard("p"))
    assert rec.name == "p"
    assert_nothing_left(env, image)


def test_an_image_under_the_mount_root_is_user_data(env: Env, image: Path) -> None:
    rec = env.create("outer", image)
    inner = Path(rec.mountpoint) / "inner.img"
    helpers.make_image(inner, size="16M")
    env.create("inner", inner)
    env.run(env.manager.discard("inner"))
    env.run(env.manager.discard("outer"))


@pytest.mark.parametrize("layer", ["upper", "lower"])
def test_a_busy_layer_is_named_in_words_not_by_path(env: Env, image: Path, layer: str) -> None:
    """Discard is all or nothing: the overlay unmounts, a layer under it is busy, so the
    overlay is mounted back as it was (writes included) and the reply names the holder."""
    rec = env.create("busy", image)
    (Path(rec.mountpoint) / "mine.txt").write_text("kept\n")
    held = env.paths(rec).tmpfs_dir if layer == "upper" else env.paths(rec).lower_dir
    sitter = subprocess.Popen(["sleep", "600"], cwd=held)  # a shell sitting in the layer
    try:
        with pytest.raises(OverlayBusy) as ei:
            env.run(env.manager.discard("busy"))
        text = str(ei.value)
        assert str(env.config.runtime_dir) not in text, text
        assert "busy" in text and f"sleep (pid {sitter.pid})" in text, text
        assert env.manager.get("busy").state.value == "active", "mounted back: active"
        assert mount_at(rec.mountpoint) is not None
        assert (Path(rec.mountpoint) / "mine.txt").read_text() == "kept\n"
    finally:
        sitter.kill()
        sitter.wait()
    env.run(env.manager.discard("busy"))
    assert_nothing_left(env, image)


def test_leftovers_message_names_no_path(env: Env, image: Path) -> None:
    (env.config.runtime_dir / "left").mkdir()
    (env.config.runtime_dir / "left" / "junk").write_text("x")
    with pytest.raises(OverlaydError) as ei:
        env.run(env.manager.create(parse_spec({"name": "left", "image": str(image)})))
    assert str(env.config.runtime_dir) not in str(ei.value)
    (env.config.runtime_dir / "left" / "junk").unlink()
    (env.config.runtime_dir / "left").rmdir()


DAMAGE = {
    "not utf-8": lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
    "not json": lambda p: p.write_text("this is not json"),
    "truncated": lambda p: p.write_text(p.read_text()[: len(p.read_text()) // 2]),
    "a directory": lambda p: (p.unlink(), p.mkdir()),
    "empty": lambda p: p.write_text(""),
}


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_record_never_stops_a_start(env: Env, image: Path, how: str) -> None:
    bad = env.create("bad", image)
    env.create("good", image)
    (Path(bad.mountpoint) / "w.txt").write_text("kept\n")
    DAMAGE[how](Path(env.paths(bad).base_dir) / "overlay.json")
    second = env.fresh_manager()
    result = env.run(second.start())  # must not raise
    env.manager = second
    assert "good" in [r.name for r in second.list()], "every other overlay is recovered"
    assert any("bad" in p for p in result.problems), result.problems
    assert "bad" in [r.name for r in env.manager.list()], "adopted from the mount table"
    assert (Path(bad.mountpoint) / "w.txt").read_text() == "kept\n"
    for rec in env.manager.list():
        env.run(env.manager.discard(rec.name))
    if how == "a directory":  # no record could be written in its place; the admin's turn
        (Path(env.paths(bad).base_dir) / "overlay.json").rmdir()
        os.rmdir(env.paths(bad).base_dir)
    assert_nothing_left(env, image)


def test_a_record_of_a_newer_overlayd_is_left_untouched(env: Env, image: Path) -> None:
    rec = env.create("future", image)
    path = Path(env.paths(rec).base_dir) / "overlay.json"
    data = json.loads(path.read_text())
    data["version"] = 99
    data["something_new"] = [1, 2, 3]
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    second = env.fresh_manager()
    result = env.run(second.start())
    env.manager = second
    assert "future" not in [r.name for r in second.list()]
    assert any("newer overlayd" in p for p in result.problems)
    assert path.read_bytes() == before, "not rewritten, not stripped"
    assert helpers.mounts_under(env.paths(rec).base_dir) != [], "its mounts are left as they are"
    data["version"] = 2
    del data["something_new"]
    path.write_text(json.dumps(data))
    third = env.fresh_manager()
    env.run(third.start())
    env.manager = third
    env.run(third.discard("future"))
    assert_nothing_left(env, image)


def test_a_block_device_behind_a_directory_link_is_refused(env: Env, root: Path) -> None:
    """Review D4: only the last component was checked, so /x/dirlink/DEV with
    dirlink -> /dev was accepted."""
    loop = helpers.make_image(root / "dev.img", size="16M")
    info = os.open(loop, os.O_RDONLY)
    from overlayd.host.loop import attach

    dev = attach(info, read_only=True, name=str(loop))
    os.close(info)
    try:
        (root / "dirlink").symlink_to("/dev")
        create_fails(env, {"name": "x", "image": str(root / "dirlink" / Path(dev.path).name)},
                     InvalidSpec, "symbolic link to the block device")
    finally:
        dev.release()
    assert_nothing_left(env)
