"""Commit to a layer (issue 14) on the real kernel: the layer keeps overlayfs' meaning
exactly. The tree of tests/kernel/test_commit.py (every kind of change the overlay format
records) committed to an erofs layer: the merged view before the commit equals the view
after it and a fresh overlay of image + layer with an empty upper, file by file with all
metadata; the layer file alone holds no overlay bookkeeping. A squashfs image (which
cannot be committed in place) round-trips through a squashfs layer; stacks of three."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from overlayd.errors import CommitFailed, ImageInUse
from overlayd.model import CommitTarget, LayerFormat
from tests import helpers
from tests.kernel.conftest import Env
from tests.kernel.test_commit import acl_for, build_lower, comparable, mutate

PER_ENGINE = True  # every test here runs with engine = "kernel" and engine = "fuse"

ALLOWED_IN_LAYER = ("trusted.overlay.opaque", "trusted.overlay.whiteout",
                    "trusted.overlay.whiteouts")


def layer_xattrs(layer: Path, root: Path) -> dict[str, list[str]]:
    """The trusted.overlay.* xattr names in the layer file, mounted on its own."""
    mnt = root / "layer-alone"
    mnt.mkdir(exist_ok=True)
    helpers.sh("mount", "-o", "ro,loop", layer, mnt)
    try:
        found: dict[str, list[str]] = {}
        for dirpath, dirnames, filenames in os.walk(mnt):
            for name in [".", *dirnames, *filenames]:
                p = os.path.join(dirpath, name)
                for x in os.listxattr(p, follow_symlinks=False):
                    if x.startswith("trusted.overlay."):
                        found.setdefault(x, []).append(os.path.relpath(p, mnt))
        return found
    finally:
        helpers.sh("umount", mnt)


def test_layer_keeps_every_kind_of_change(env: Env, root: Path) -> None:
    tree = root / "tree"
    tree.mkdir()
    build_lower(tree)
    img = helpers.make_image(root / "disk.img", tree)
    image_sum = helpers.sha256(img)
    outside = root / "outside"
    outside.mkdir()
    rec = env.create("full", img, size="64M")
    mp = Path(rec.mountpoint)
    fuse = env.engine == "fuse"
    mutate(mp, outside, fuse=fuse)
    before = comparable(helpers.snapshot(mp), fuse)

    stats = env.run(env.manager.commit("full", target=CommitTarget.LAYER))
    assert stats.entries > 40 and stats.bytes >= 3 << 20
    rec = env.manager.get("full")
    assert rec.state.value == "active" and len(rec.layers) == 1
    layer = Path(rec.layers[0].path)
    assert layer.parent == env.config.layers_of("full") and layer.suffix == ".erofs"
    assert os.listdir(env.paths(rec).upper_dir) == [], "an empty upper"
    assert env.run(env.manager.diff("full")) == []
    problems = helpers.diff_snapshots(before, comparable(helpers.snapshot(mp), fuse))
    assert problems == [], "merged view after the commit differs:\n" + "\n".join(problems)
    assert helpers.sha256(img) == image_sum, "the image is never written"
    assert sorted(os.listdir(outside)) == []

    # The layer alone: the overlay format, nothing private (origin, impure, uuid...).
    names = layer_xattrs(layer, root)
    leaked = {n: p for n, p in names.items() if n not in ALLOWED_IN_LAYER
              and not n.startswith("trusted.overlay.overlay.")}
    assert leaked == {}, f"overlay bookkeeping leaked into the layer: {leaked}"
    assert "trusted.overlay.opaque" in names, "the opaque directory is marked"
    if not fuse:  # fuse-overlayfs refuses to set trusted.overlay.* names
        assert "trusted.overlay.overlay.nested" in names, "an escaped name is kept as it was"
    assert not [f for f in os.listdir(layer.parent) if f.endswith(".tmp")]

    # A fresh overlay of image + layer, empty upper: the same view.
    env.run(env.manager.discard("full"))
    assert layer.exists(), "a discard keeps the layer files"
    rec = env.create("again", img, size="64M", layers=[str(layer)])
    problems = helpers.diff_snapshots(before, comparable(helpers.snapshot(rec.mountpoint),
                                                         fuse))
    assert problems == [], "image + layer differs:\n" + "\n".join(problems)
    env.run(env.manager.discard("again"))


def seconds(snap: dict[str, object]) -> dict[str, object]:
    """squashfs keeps whole seconds of mtime only."""
    out: dict[str, object] = {}
    for k, v in snap.items():
        if isinstance(v, dict):
            v = {**v, "mtime": v["mtime"] // 10**9 * 10**9}
        out[k] = v
    return out


def squashfs_image(root: Path) -> Path:
    tree = root / "sqtree"
    (tree / "dir").mkdir(parents=True)
    (tree / "a.txt").write_text("a from the image\n")
    (tree / "gone.txt").write_text("to be deleted\n")
    (tree / "dir" / "old.txt").write_text("old\n")
    img = root / "sq.img"
    helpers.sh("mksquashfs", tree, img, "-noappend", "-quiet", "-no-progress")
    return img


def test_squashfs_image_round_trip(env: Env, root: Path) -> None:
    img = squashfs_image(root)
    rec = env.create("sq", img)
    mp = Path(rec.mountpoint)
    with pytest.raises(CommitFailed, match="layer"):  # in place: impossible, says how
        env.run(env.manager.commit("sq"))
    (mp / "a.txt").write_text("changed\n")
    (mp / "gone.txt").unlink()
    (mp / "new").mkdir()
    (mp / "new" / "file").write_text("new\n")
    os.setxattr(mp / "new" / "file", "user.note", b"kept")
    shutil.rmtree(mp / "dir")
    (mp / "dir").mkdir()  # opaque now
    (mp / "dir" / "fresh.txt").write_text("fresh\n")
    before = helpers.snapshot(mp)
    env.run(env.manager.commit("sq", target=CommitTarget.LAYER,
                               layer_format=LayerFormat.SQUASHFS))
    layer = env.manager.get("sq").layers[0]
    assert layer.fstype == "squashfs" and layer.path.endswith(".sqfs")
    assert helpers.diff_snapshots(seconds(before), seconds(helpers.snapshot(mp))) == []
    env.run(env.manager.discard("sq"))
    rec = env.create("sq", img, layers=[layer.path])
    after = helpers.snapshot(rec.mountpoint)
    assert helpers.diff_snapshots(seconds(before), seconds(after)) == []
    assert (Path(rec.mountpoint) / "a.txt").read_text() == "changed\n"
    assert not (Path(rec.mountpoint) / "gone.txt").exists()
    assert os.listdir(Path(rec.mountpoint) / "dir") == ["fresh.txt"]
    env.run(env.manager.discard("sq"))


def test_squashfs_layer_refuses_acls_and_keeps_the_writes(env: Env, image: Path) -> None:
    rec = env.create("acl", image)
    mp = Path(rec.mountpoint)
    (mp / "f").write_text("x\n")
    os.setxattr(mp / "f", "system.posix_acl_access", acl_for(1000))
    with pytest.raises(CommitFailed, match="ACL"):
        env.run(env.manager.commit("acl", target=CommitTarget.LAYER,
                                   layer_format=LayerFormat.SQUASHFS))
    rec = env.manager.get("acl")
    assert rec.state.value == "active" and rec.layers == ()
    assert (mp / "f").read_text() == "x\n"
    assert os.getxattr(mp / "f", "system.posix_acl_access")
    assert not os.listdir(env.config.layers_of("acl")), "no half layer"
    env.run(env.manager.commit("acl", target=CommitTarget.LAYER))  # erofs holds ACLs
    assert os.getxattr(mp / "f", "system.posix_acl_access")
    env.run(env.manager.discard("acl"))


def test_three_layers_and_a_shared_image(env: Env, image: Path) -> None:
    other = env.create("other", image)
    rec = env.create("stack", image)
    mp = Path(rec.mountpoint)
    views = []
    for i in range(3):
        (mp / f"gen{i}.txt").write_text(f"generation {i}\n")
        if i == 1:
            (mp / "gen0.txt").unlink()  # made in layer 1, deleted in layer 2
        if i == 2:
            (mp / "hello.txt").write_text("changed in 3\n")
        views.append(helpers.snapshot(mp))
        env.run(env.manager.commit("stack", target=CommitTarget.LAYER))
        assert helpers.diff_snapshots(views[-1], helpers.snapshot(mp)) == []
    rec = env.manager.get("stack")
    assert [Path(la.path).name for la in rec.layers] == ["0001.erofs", "0002.erofs",
                                                         "0003.erofs"]
    # Without a target, an overlay with layers commits to a layer; in place is refused.
    (mp / "gen3.txt").write_text("3\n")
    with pytest.raises(CommitFailed, match="layer"):
        env.run(env.manager.commit("stack", target=CommitTarget.IMAGE))
    env.run(env.manager.commit("stack"))
    assert len(env.manager.get("stack").layers) == 4
    assert (Path(other.mountpoint) / "hello.txt").read_text() == "hello from the image\n"
    # A restart adopts the stack as it is.
    env.drop_locks()
    env.manager = env.fresh_manager()
    env.run(env.manager.start())
    assert len(env.manager.get("stack").layers) == 4
    assert (mp / "gen3.txt").read_text() == "3\n"
    env.run(env.manager.discard("stack"))
    env.run(env.manager.discard("other"))


def test_layer_file_is_what_the_tool_makes_by_hand(env: Env, root: Path, image: Path) -> None:
    """The layer is mkfs.erofs of the upper, nothing else: fsck.erofs finds it clean."""
    rec = env.create("fsck", image)
    (Path(rec.mountpoint) / "x").write_text("x\n")
    env.run(env.manager.commit("fsck", target=CommitTarget.LAYER))
    layer = env.manager.get("fsck").layers[0].path
    if subprocess.run(["sh", "-c", "command -v fsck.erofs"], capture_output=True).returncode:
        pytest.skip("fsck.erofs is not installed")
    r = subprocess.run(["fsck.erofs", layer], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    env.run(env.manager.discard("fsck"))


def test_three_layers_squash_then_revert(env: Env, root: Path) -> None:
    """Three layers then Squash: the same view (with writes in RAM kept, and every kind of
    change of test_commit's tree in the layers); Revert: the view before the last commit."""
    tree = root / "tree"
    tree.mkdir()
    build_lower(tree)
    img = helpers.make_image(root / "disk.img", tree)
    rec = env.create("sq3", img, size="64M")
    mp = Path(rec.mountpoint)
    outside = root / "outside"
    outside.mkdir()
    mutate(mp, outside, fuse=env.engine == "fuse")  # layer 1: every kind of change
    env.run(env.manager.commit("sq3", target=CommitTarget.LAYER))
    (mp / "opaque" / "c.txt").unlink()  # layer 2: a file of layer 1 deleted, a dir
    shutil.move(mp / "file2dir", mp / "dir-moved")  # of layer 1 moved, one of the image
    shutil.rmtree(mp / "sub")  # gone
    (mp / "keep.txt").write_text("changed in layer 2\n")
    before_third = helpers.snapshot(mp)
    env.run(env.manager.commit("sq3", target=CommitTarget.LAYER))
    (mp / "sub").mkdir()  # layer 3: a dir again where layer 2 has a whiteout
    (mp / "sub" / "back.txt").write_text("back\n")
    (mp / "gone-in-3").write_text("x")
    os.link(mp / "gone-in-3", mp / "hardlink-in-3")
    env.run(env.manager.commit("sq3", target=CommitTarget.LAYER))
    (mp / "in-ram.txt").write_text("not committed\n")
    view = helpers.snapshot(mp)
    old = [Path(la.path) for la in env.manager.get("sq3").layers]

    env.run(env.manager.squash("sq3"))
    rec = env.manager.get("sq3")
    assert len(rec.layers) == 1 and rec.state.value == "active"
    problems = helpers.diff_snapshots(view, helpers.snapshot(mp))
    assert problems == [], "the squashed stack differs:\n" + "\n".join(problems)
    assert not any(p.exists() for p in old), "the squashed layer files are removed"
    assert not [f for f in os.listdir(env.config.layers_of("sq3")) if f.startswith(".")]
    names = layer_xattrs(Path(rec.layers[0].path), root)
    assert set(names) <= {*ALLOWED_IN_LAYER, "trusted.overlay.overlay.nested"}, names

    # Revert: the writes in RAM must be committed first, or go with the layer.
    with pytest.raises(CommitFailed, match="commit them first"):
        env.run(env.manager.revert("sq3"))
    env.run(env.manager.commit("sq3"))  # a second layer, holding in-ram.txt
    env.run(env.manager.revert("sq3"))
    without_ram = {k: v for k, v in view.items() if k != "in-ram.txt"}
    now = helpers.snapshot(mp)
    now.pop(".", None), without_ram.pop(".", None)  # the root's mtime saw in-ram.txt
    assert helpers.diff_snapshots(without_ram, now) == []
    (mp / "scratch").write_text("thrown away\n")
    env.run(env.manager.revert("sq3", discard=True))  # the squashed layer goes too
    assert env.manager.get("sq3").layers == ()
    assert not (mp / "scratch").exists() and not (mp / "in-ram.txt").exists()
    assert (mp / "keep.txt").read_text() == "lower keep.txt\n", "the image's view"
    assert before_third  # (the view before the third commit is inside the squash now)
    env.run(env.manager.discard("sq3"))


def test_squash_into_the_image(env: Env, root: Path) -> None:
    """Squash with target image: the layer files applied to the image in place with
    Commit's merge; the view is the same, the stack empty, the writes in RAM kept; the
    image on its own holds the layers (e2fsck clean); a shared image is refused."""
    tree = root / "tree"
    tree.mkdir()
    build_lower(tree)
    img = helpers.make_image(root / "disk.img", tree)
    rec = env.create("into", img, size="64M")
    mp = Path(rec.mountpoint)
    outside = root / "outside"
    outside.mkdir()
    mutate(mp, outside, fuse=env.engine == "fuse")
    env.run(env.manager.commit("into", target=CommitTarget.LAYER))
    (mp / "keep.txt").write_text("layer 2\n")
    shutil.rmtree(mp / "new")
    env.run(env.manager.commit("into", target=CommitTarget.LAYER))
    in_layers = helpers.snapshot(mp)
    (mp / "ram.txt").write_text("stays in RAM\n")
    view = helpers.snapshot(mp)
    layer_files = [Path(la.path) for la in env.manager.get("into").layers]

    other = env.create("reader", img)
    with pytest.raises(ImageInUse, match="read by"):
        env.run(env.manager.squash("into", target=CommitTarget.IMAGE))
    env.run(env.manager.discard(other.name))

    env.run(env.manager.squash("into", target=CommitTarget.IMAGE))
    rec = env.manager.get("into")
    assert rec.layers == () and rec.state.value == "active" and not rec.half_committed
    problems = helpers.diff_snapshots(view, helpers.snapshot(mp))
    assert problems == [], "the view changed:\n" + "\n".join(problems)
    assert (mp / "ram.txt").read_text() == "stays in RAM\n"
    assert not any(p.exists() for p in layer_files)
    env.run(env.manager.discard("into"))
    assert subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True).returncode == 0
    check = root / "check"
    check.mkdir()
    helpers.sh("mount", "-o", "ro,loop", img, check)
    try:
        raw = helpers.snapshot(check, unescape=True)
    finally:
        helpers.sh("umount", check)
    in_layers.pop(".", None), raw.pop(".", None)
    problems = helpers.diff_snapshots(in_layers, raw)
    assert problems == [], "the image differs from the layers' view:\n" + "\n".join(problems)


def test_cancel_while_the_tool_writes(env: Env, image: Path) -> None:
    """Cancel while mkfs.erofs writes the layer (held at one file by a fanotify gate): the
    tool is killed, its part removed, no layer stacked, the writes still in RAM."""
    import threading

    from overlayd.errors import Cancelled
    from overlayd.jobs import CancelToken
    from tests.gate import OpenGate

    rec = env.create("cancel", image)
    mp = Path(rec.mountpoint)
    (mp / "a.txt").write_text("a\n")
    (mp / "gate.bin").write_bytes(b"g" * 4096)
    token = CancelToken()
    done = threading.Event()

    def cancel_when_held(gate: OpenGate) -> None:
        gate.wait()
        assert [f for f in os.listdir(env.config.layers_of("cancel")) if f.endswith(".tmp")]
        token.cancel()
        gate.release()
        while not done.is_set():  # later opens pass: a FUSE server starting over the
            try:                  # upper opens its files (engine = "fuse")
                gate.wait(timeout=0.05)
            except TimeoutError:
                continue
            gate.release()

    with OpenGate(Path(env.paths(rec).upper_dir) / "gate.bin") as gate:
        t = threading.Thread(target=cancel_when_held, args=(gate,))
        t.start()
        try:
            with pytest.raises(Cancelled, match="no layer was added"):
                env.run(env.manager.commit("cancel", target=CommitTarget.LAYER,
                                           cancel=token))
        finally:
            done.set()
            t.join()
    rec = env.manager.get("cancel")
    assert rec.state.value == "active" and rec.layers == ()
    assert os.listdir(env.config.layers_of("cancel")) == []
    assert (mp / "a.txt").read_text() == "a\n"
    env.run(env.manager.discard("cancel"))
