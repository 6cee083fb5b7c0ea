"""kill -9 of the daemon right after every step of Create, Commit and Discard, on the real
kernel: a restarted daemon loses no write, leaks no mount or loop device, and every name
can be used again. The daemon is tests/kernel/crashing.py in a child process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from overlayd.model import CommitTarget
from tests import helpers
from tests.kernel.conftest import Env

PER_UPPER = True  # with a tmpfs upper and a zram upper
PER_ENGINE = True  # and with engine = "fuse"

ROOT = Path(__file__).resolve().parents[2]
WRITES = {"a.txt": "first\n", "sub/b.txt": "second\n", "hello.txt": "changed\n"}
ACTIONS = ["create", "commit", "commit-layer", "squash", "squash-into-image", "discard",
           "discard-force", "create-shared", "discard-shared"]


def child(env: Env, image: Path, action: str, kill_at: int) -> subprocess.CompletedProcess[str]:
    env.drop_locks()  # the child is the daemon: the image is its to lock
    return subprocess.run([sys.executable, "-m", "tests.kernel.crashing",
                           str(env.config.runtime_dir), str(image), action, str(kill_at),
                           env.upper],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def prepare(env: Env, image: Path, action: str) -> None:
    """Before the action: an overlay with writes (but for create); for the -shared ones,
    another overlay of the image first, sharing its lower."""
    if action.endswith("-shared"):
        env.create("other", image)
    if action.startswith("create"):
        return
    rec = env.create("demo", image)
    for rel, text in WRITES.items():
        (Path(rec.mountpoint) / rel).parent.mkdir(exist_ok=True)
        (Path(rec.mountpoint) / rel).write_text(text)
        if action.startswith("squash"):  # each write in a layer of its own
            env.run(env.manager.commit("demo", target=CommitTarget.LAYER))
    if action.startswith("squash"):
        (Path(rec.mountpoint) / "ram.txt").write_text("in RAM\n")
    env.run(env.manager.aclose())


def restart(env: Env) -> None:
    env.manager = env.fresh_manager()
    env.run(env.manager.start())


def image_files(image: Path) -> dict[str, str]:
    """The writes as the image holds them (read with debugfs, nothing mounted)."""
    out = {}
    for rel in WRITES:
        r = subprocess.run(["debugfs", "-R", f"cat /{rel}", str(image)], capture_output=True,
                           text=True)
        out[rel] = r.stdout
    return out


@pytest.mark.parametrize("action", ACTIONS)
def test_kill_after_every_step(env: Env, image: Path, action: str) -> None:
    prepare(env, image, action)
    restart(env)  # the child is the daemon now; ours must forget what it knew
    env.manager = env.fresh_manager()
    full = child(env, image, action, 0)
    assert full.returncode == 0, full.stderr
    steps = int(full.stdout.split()[-1])
    # Undo the full run so that each kill starts from the same place.
    restart(env)
    for rec in env.manager.list():
        env.run(env.manager.discard(rec.name, force=True))
    helpers.make_image(image, image.parent / "tree")
    for k in range(1, steps + 1):
        shutil.rmtree(env.config.layer_dir, ignore_errors=True)
        prepare(env, image, action)
        env.manager = env.fresh_manager()
        r = child(env, image, action, k)
        # The first run made the shared mount root: later ones may take a step less.
        assert r.returncode == -9 or (r.returncode == 0 and k >= steps - 1), \
            f"step {k}: {r.stderr[-2000:]}"
        restart(env)
        live = env.manager.list()
        if action.startswith(("commit", "squash")):
            rec = env.manager.get("demo")
            assert rec.state.value == "active"
            seen = {rel: (Path(rec.mountpoint) / rel).read_text() for rel in WRITES}
            assert seen == WRITES, f"step {k}: a write was lost"
        if action == "commit-layer":  # no half layer; none made that is not stacked
            layers = env.config.layers_of("demo")
            made = sorted(os.listdir(layers)) if layers.exists() else []
            stacked = [os.path.basename(layer.path) for layer in rec.layers]
            assert made == stacked, f"step {k}: layer files {made}, stacked {stacked}"
            assert len(stacked) <= 1
            if stacked:  # the writes are in the layer, and no longer in RAM
                assert os.listdir(env.paths(rec).upper_dir) == [], f"step {k}"
        if action.startswith("squash"):  # no half or retired layer left; RAM kept
            layers = env.config.layers_of("demo")
            made = sorted(os.listdir(layers))
            stacked = [os.path.basename(layer.path) for layer in rec.layers]
            assert made == stacked, f"step {k}: layer files {made}, stacked {stacked}"
            assert len(stacked) in ((0, 3) if action.endswith("image") else (1, 3)), \
                f"step {k}: {stacked}"
            assert (Path(rec.mountpoint) / "ram.txt").read_text() == "in RAM\n"
        if action.endswith("-shared"):  # the kill cost the sharer nothing
            other = env.manager.get("other")
            assert other.state.value == "active", f"step {k}"
            assert (Path(other.mountpoint) / "hello.txt").exists(), f"step {k}"
        for rec in live:
            env.run(env.manager.discard(rec.name, force=True))
        assert helpers.mounts_under(str(env.root)) == [], f"step {k}: mounts left"
        assert set(os.listdir(env.config.runtime_dir)) <= {"mnt", ".lowers"}, \
            f"step {k}: files left"
        lowers = env.config.runtime_dir / ".lowers"
        assert not lowers.exists() or not os.listdir(lowers), f"step {k}: a lower left"
        # The name is free again.
        env.create("demo", image)
        env.run(env.manager.discard("demo"))
        # Autoclear detaches the loop device once its last user is gone, which the kernel
        # may finish a moment after the unmount returned: wait (a bound that only catches
        # a device that stays).
        helpers.wait_for(lambda: not [d for d, f in helpers.attached_loops().items()
                                      if f == str(image)], what=f"step {k}: loop device left")
        helpers.make_image(image, image.parent / "tree")


def test_kill_while_the_tool_writes_the_layer(env: Env, image: Path) -> None:
    """kill -9 of the daemon while mkfs.erofs is writing the layer (held at one file of the
    upper by a fanotify gate): the tool dies with it, and after the restart no half layer
    is left or stacked and every write is still in RAM."""
    from tests.gate import OpenGate

    prepare(env, image, "commit-layer")
    env.manager = env.fresh_manager()
    env.run(env.manager.start())
    demo = env.manager.get("demo")
    (Path(demo.mountpoint) / "gate.bin").write_bytes(b"g" * 65536)
    upper = Path(env.paths(demo).upper_dir)
    env.run(env.manager.aclose())
    env.drop_locks()
    with OpenGate(upper / "gate.bin") as gate:
        proc = subprocess.Popen([sys.executable, "-m", "tests.kernel.crashing",
                                 str(env.config.runtime_dir), str(image), "commit-layer", "0"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        tool = gate.wait()
        layers = env.config.layers_of("demo")
        assert [f for f in os.listdir(layers) if f.endswith(".tmp")], "the tool is writing"
        proc.kill()  # the daemon we started, by its PID
        proc.communicate(timeout=30)
        helpers.wait_for(lambda: not Path(f"/proc/{tool}").exists() or
                         "zombie" in Path(f"/proc/{tool}/status").read_text(),
                         what="the tool dies with the daemon")
    restart(env)
    demo = env.manager.get("demo")
    assert demo.state.value == "active" and demo.layers == ()
    assert os.listdir(env.config.layers_of("demo")) == [], "no half layer is left"
    seen = {rel: (Path(demo.mountpoint) / rel).read_text() for rel in WRITES}
    assert seen == WRITES
    env.run(env.manager.commit("demo", target=CommitTarget.LAYER))  # and it can finish
    assert [Path(la.path).name for la in env.manager.get("demo").layers] == ["0001.erofs"]
    env.run(env.manager.discard("demo"))
