"""Bad input to Create, Commit and Discard: a clear error, and nothing left behind."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from overlayd.errors import InvalidSpec, LimitExceeded, NoSuchOverlay, OverlayExists
from overlayd.model import parse_spec
from tests import helpers
from tests.kernel.conftest import Env


def assert_nothing_left(env: Env, image: Path | None = None) -> None:
    assert helpers.mounts_under(str(env.root)) == []
    leftovers = [p for p in os.listdir(env.config.runtime_dir) if p not in ("mnt", ".lowers")]
    if (env.config.runtime_dir / ".lowers").exists():
        assert os.listdir(env.config.runtime_dir / ".lowers") == [], "a shared lower is left"
    assert leftovers == [], f"runtime directory holds {leftovers}"
    assert os.listdir(env.config.runtime_dir / "mnt") == [] \
        if (env.config.runtime_dir / "mnt").exists() else True
    if image is not None:
        assert str(image) not in helpers.attached_loops().values()


def create_fails(env: Env, spec: dict, error: type[Exception], *words: str) -> str:  # type: ignore[type-arg]
    with pytest.raises(error) as exc:
        env.run(env.manager.create(parse_spec(spec)))
    text = str(exc.value)
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"
    assert "Traceback" not in text and "Errno" not in text
    return text


@pytest.mark.parametrize("name", ["", "a/b", "..", "a\0b", "a\nb", ".hidden", "-x", "x" * 65,
                                  "x" * 10_000, "mnt"])
def test_invalid_names(env: Env, image: Path, name: str) -> None:
    with pytest.raises(InvalidSpec) as exc:
        parse_spec({"name": name, "image": str(image)})
    assert exc.value.field == "name"
    assert_nothing_left(env, image)


def test_duplicate_name_leaves_the_first_alone(env: Env, image: Path) -> None:
    rec = env.create("dup", image)
    create_fails(env, {"name": "dup", "image": str(image)}, OverlayExists, "'dup'", "exists")
    assert (Path(rec.mountpoint) / "hello.txt").exists()
    env.run(env.manager.discard("dup"))


def test_missing_image(env: Env, root: Path) -> None:
    create_fails(env, {"name": "x", "image": str(root / "nope.img")}, InvalidSpec,
                 "does not exist")
    assert_nothing_left(env)


def test_image_unreadable_by_the_caller(env: Env, image: Path) -> None:
    image.chmod(0o600)  # root's, and uid 65534 may not read it
    with pytest.raises(InvalidSpec) as exc:
        env.run(env.manager.create(parse_spec({"name": "x", "image": str(image)}),
                                   owner_uid=65534))
    assert "cannot be read by uid 65534" in str(exc.value)
    assert_nothing_left(env, image)


def test_image_readable_by_the_caller(env: Env, image: Path) -> None:
    helpers.traversable(image.parent)
    image.chmod(0o644)
    rec = env.run(env.manager.create(parse_spec({"name": "mine", "image": str(image)}),
                                     owner_uid=65534))
    assert rec.owner_uid == 65534
    env.run(env.manager.discard("mine"))


def test_empty_image(env: Env, root: Path) -> None:
    img = root / "empty.img"
    img.touch()
    create_fails(env, {"name": "x", "image": str(img)}, InvalidSpec, "empty")
    assert_nothing_left(env, img)


def test_image_without_a_file_system(env: Env, root: Path) -> None:
    img = root / "zeros.img"
    img.write_bytes(b"\0" * (1 << 20))
    create_fails(env, {"name": "x", "image": str(img)}, InvalidSpec,
                 "holds no file system overlayd recognizes")
    assert_nothing_left(env, img)


def test_unsupported_file_system(env: Env, root: Path) -> None:
    img = root / "fat.img"
    boot = bytearray(1 << 20)
    boot[3:11] = b"MSDOS5.0"
    boot[82:87] = b"FAT32"
    boot[510:512] = b"\x55\xaa"
    img.write_bytes(bytes(boot))
    create_fails(env, {"name": "x", "image": str(img)}, InvalidSpec, "FAT", "case-insensitive")
    assert_nothing_left(env, img)


def test_file_system_the_kernel_lacks(env: Env, root: Path) -> None:
    if "iso9660" in Path("/proc/filesystems").read_text():
        pytest.skip("this kernel has iso9660")  # pragma: no cover - not on this machine kind
    img = root / "cd.iso"
    data = bytearray(1 << 20)
    data[0x8001:0x8006] = b"CD001"
    img.write_bytes(bytes(data))
    create_fails(env, {"name": "x", "image": str(img)}, InvalidSpec, "iso9660",
                 "cannot mount")
    assert_nothing_left(env, img)


def test_fstype_that_does_not_match(env: Env, image: Path) -> None:
    create_fails(env, {"name": "x", "image": str(image), "fstype": "xfs"}, InvalidSpec,
                 "holds ext4, not xfs")
    assert_nothing_left(env, image)


@pytest.mark.parametrize("kind", ["socket", "fifo", "chardev"])
def test_image_that_is_not_a_file(env: Env, root: Path, kind: str) -> None:
    p = root / kind
    if kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    elif kind == "fifo":
        os.mkfifo(p)
    else:
        p = Path("/dev/null")
    create_fails(env, {"name": "x", "image": str(p)}, InvalidSpec, "not an image file")
    assert_nothing_left(env)


def test_image_fd_closed_socket_or_directory(env: Env, root: Path) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    create_fails(env, {"name": "x", "image_fd": r}, InvalidSpec, "not an open file descriptor")
    s = socket.socket(socket.AF_UNIX)
    try:
        create_fails(env, {"name": "x", "image_fd": s.fileno()}, InvalidSpec, "socket")
    finally:
        s.close()
    d = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        create_fails(env, {"name": "x", "image_fd": d}, InvalidSpec, "directory")
    finally:
        os.close(d)
    assert_nothing_left(env)


def test_mountpoint_missing(env: Env, image: Path, root: Path) -> None:
    create_fails(env, {"name": "x", "image": str(image), "mountpoint": str(root / "none")},
                 InvalidSpec, "does not exist")
    assert_nothing_left(env, image)


def test_mountpoint_not_a_directory(env: Env, image: Path, root: Path) -> None:
    f = root / "file"
    f.write_text("")
    create_fails(env, {"name": "x", "image": str(image), "mountpoint": str(f)}, InvalidSpec,
                 "not a directory")
    assert_nothing_left(env, image)


def test_mountpoint_already_mounted(env: Env, image: Path, root: Path) -> None:
    mp = root / "busy"
    mp.mkdir()
    helpers.sh("mount", "-t", "tmpfs", "test-own-tmpfs", mp)  # the test's own mount
    try:
        create_fails(env, {"name": "x", "image": str(image), "mountpoint": str(mp)},
                     InvalidSpec, "already a mount point")
    finally:
        helpers.sh("umount", mp)
    assert_nothing_left(env, image)


def test_mountpoint_inside_another_overlay(env: Env, image: Path) -> None:
    outer = env.create("outer", image)
    inner = Path(outer.mountpoint) / "sub"
    create_fails(env, {"name": "inner", "image": str(image), "mountpoint": str(inner)},
                 InvalidSpec, "inside overlay 'outer'")
    env.run(env.manager.discard("outer"))
    assert_nothing_left(env, image)


def test_size_zero_and_beyond_memory(env: Env, image: Path) -> None:
    with pytest.raises(InvalidSpec, match="more than 0 bytes"):
        parse_spec({"name": "x", "image": str(image), "size": 0})
    create_fails(env, {"name": "x", "image": str(image), "size": (1 << 64) - 1},
                 LimitExceeded, "memory")
    assert_nothing_left(env, image)


def test_commit_and_discard_of_unknown_overlay(env: Env) -> None:
    with pytest.raises(NoSuchOverlay, match="no overlay named 'ghost'"):
        env.run(env.manager.commit("ghost"))
    with pytest.raises(NoSuchOverlay):
        env.run(env.manager.discard("ghost"))
    with pytest.raises(NoSuchOverlay):
        env.run(env.manager.diff("ghost"))


def test_tmpfs_full_gives_enospc_and_leaves_the_image(env: Env, image: Path) -> None:
    before = helpers.sha256(image)
    rec = env.create("small", image, size="1M")
    with pytest.raises(OSError) as exc, open(Path(rec.mountpoint) / "big", "wb") as f:
        f.write(os.urandom(2 << 20))
        f.flush()
        os.fsync(f.fileno())
    assert exc.value.errno == 28  # ENOSPC
    assert helpers.sha256(image) == before
    env.run(env.manager.discard("small"))
    assert helpers.sha256(image) == before
    assert_nothing_left(env, image)


def test_discard_busy_names_the_process_and_force_detaches(env: Env, image: Path) -> None:
    rec = env.create("held", image)
    with open(Path(rec.mountpoint) / "hello.txt") as held:
        proc = subprocess.Popen(["sleep", "60"], stdin=held)
    try:
        from overlayd.errors import OverlayBusy

        with pytest.raises(OverlayBusy) as exc:
            env.run(env.manager.discard("held"))
        assert f"sleep (pid {proc.pid})" in str(exc.value)
        assert "force" in str(exc.value)
        assert (Path(rec.mountpoint) / "hello.txt").exists(), "still mounted after refusal"
        assert env.manager.get("held").state.value == "active"
        env.run(env.manager.discard("held", force=True))
        assert helpers.mounts_under(str(env.root)) == []
        assert env.manager.list() == []
    finally:
        proc.kill()
        proc.wait()
    assert_nothing_left(env)
