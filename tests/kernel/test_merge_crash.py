"""apply_upper stopped at every point: no entry is ever half-made under its real name, and
running it again over the same upper gives exactly the image a whole run gives.

Each case builds a lower and an upper (the format cases of test_merge_format.py, and an
upper a real overlayfs mount made from test_commit.py's lower and changes). For every
point at which apply_upper is about to change the image (its fault hook), a child
process is SIGKILLed right there over a fresh copy of the lower; the copy must then hold
every entry either as it was or as it will be, and after a second, whole run it must be
equal to the result of one whole run, with no temporary left. Needs root (trusted.*
xattrs, device nodes, the overlay mount), hence in the real-kernel tier.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from overlayd.host.merge import TMP_PREFIX, apply_upper, is_temporary
from tests import helpers
from tests.kernel import test_commit
from tests.kernel.test_merge_format import layers, whiteout_dev, whiteout_xattr

__all__ = ["layers"]  # the fixture, shared with test_merge_format

Build = Callable[[Path, Path, Path], None]  # (upper, lower, scratch)


# -- the cases ----------------------------------------------------------------------------

def case_whiteouts(upper: Path, lower: Path, scratch: Path) -> None:
    (lower / "a").write_text("a")
    (lower / "d" / "e").mkdir(parents=True)
    (lower / "d" / "e" / "x").write_text("x")
    (lower / "b").write_text("b")
    whiteout_dev(upper / "a")
    whiteout_dev(upper / "d")
    (upper / "w").mkdir()
    os.setxattr(upper / "w", "trusted.overlay.opaque", b"x")
    (lower / "w").mkdir()
    (lower / "w" / "gone").write_text("g")
    (lower / "w" / "stays").write_text("s")
    whiteout_xattr(upper / "w" / "gone")
    whiteout_dev(upper / "never-was")


def case_opaque(upper: Path, lower: Path, scratch: Path) -> None:
    (lower / "d" / "sub").mkdir(parents=True)
    (lower / "d" / "old").write_text("o")
    (lower / "d" / "sub" / "older").write_text("oo")
    (upper / "d").mkdir()
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    (upper / "d" / "new").write_text("n")
    (upper / "d" / "sub").mkdir()
    (upper / "d" / "sub" / "newer").write_text("nn")
    os.chmod(upper / "d", 0o750)


def case_xattrs(upper: Path, lower: Path, scratch: Path) -> None:
    (lower / "f").write_text("old f")
    f = upper / "f"
    f.write_text("f")
    for name in ("trusted.overlay.origin", "trusted.overlay.impure", "trusted.overlay.nlink"):
        os.setxattr(f, name, b"internal")
    os.setxattr(f, "trusted.overlay.overlay.nested", b"user data")
    os.setxattr(f, "user.plain", b"p")
    os.setxattr(upper, "trusted.overlay.uuid", b"0123")
    os.setxattr(upper, "user.root", b"r")


def case_symlink_trap(upper: Path, lower: Path, scratch: Path) -> None:
    outside = scratch / "outside"
    outside.mkdir(exist_ok=True)
    os.symlink(outside, lower / "trap")
    (upper / "trap").mkdir()
    (upper / "trap" / "payload").write_text("p")
    os.symlink(outside, upper / "newlink")


def case_hard_links(upper: Path, lower: Path, scratch: Path) -> None:
    (lower / "a").write_text("old")
    os.link(lower / "a", lower / "b")  # b keeps the old content
    (lower / "c").write_text("replaced by a link")
    (lower / "dir").mkdir()
    (upper / "a").write_text("new")
    (upper / "dir").mkdir()
    (upper / "dir" / "one").write_text("one inode, four names")
    os.link(upper / "dir" / "one", upper / "c")
    os.link(upper / "dir" / "one", upper / "z")
    (upper / "newdir").mkdir()
    os.link(upper / "dir" / "one", upper / "newdir" / "two")


def case_type_changes(upper: Path, lower: Path, scratch: Path) -> None:
    (lower / "file2dir").write_text("f")
    (lower / "dir2file" / "inner").mkdir(parents=True)
    (lower / "dir2file" / "inner" / "x").write_text("x")
    (lower / "dir2link").mkdir()
    (lower / "dir2link" / "y").write_text("y")
    os.symlink("target", lower / "link2file")
    (lower / "file2fifo").write_text("f")
    (lower / "dir2dev").mkdir()
    (upper / "file2dir").mkdir()
    (upper / "file2dir" / "child").write_text("c")
    (upper / "dir2file").write_text("now a file")
    os.symlink("elsewhere", upper / "dir2link")
    (upper / "link2file").write_text("was a link")
    os.mkfifo(upper / "file2fifo")
    os.mknod(upper / "dir2dev", stat.S_IFCHR | 0o640, os.makedev(1, 5))


def case_new_things(upper: Path, lower: Path, scratch: Path) -> None:
    (lower / "keep").write_text("k")
    (lower / "sub").mkdir()
    (upper / "sub").mkdir()
    (upper / "sub" / "new.txt").write_text("new")
    os.chown(upper / "sub" / "new.txt", 1234, 5678)
    os.chmod(upper / "sub" / "new.txt", 0o4755)
    os.mkfifo(upper / "sub" / "fifo")
    os.mknod(upper / "sub" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.symlink("new.txt", upper / "sub" / "link")
    deep = upper / "n1" / "n2" / "n3"
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("deep")
    os.chown(upper / "n1", 7, 8)
    with open(upper / "sparse.bin", "wb") as f:
        f.write(b"A" * 4096)
        f.truncate(4 << 20)
    (upper / "empty").write_bytes(b"")
    for p in (upper / "sub" / "new.txt", upper / "n1", upper / "empty"):
        os.utime(p, ns=(1_000_000_000_000, 2_000_000_000_000), follow_symlinks=False)


def case_leftovers_of_a_killed_commit(upper: Path, lower: Path, scratch: Path) -> None:
    (lower / "d").mkdir()
    (lower / "d" / f"{TMP_PREFIX}1234-7").write_text("half a file")  # an earlier version's
    ino = os.stat(lower / "d").st_ino
    (lower / "d" / f"{TMP_PREFIX}{ino}-0123abcd-1").mkdir()  # this version's
    (lower / "d" / f"{TMP_PREFIX}{ino}-0123abcd-1" / "x").write_text("x")
    (lower / "d" / f"{TMP_PREFIX}{ino + 1}-0123abcd-2").write_text("a user's, by chance")
    (lower / "d" / f"{TMP_PREFIX}notes").write_text("a user's")
    (upper / "d").mkdir()
    (upper / "d" / "f").write_text("f")


def case_real_overlay(upper: Path, lower: Path, scratch: Path) -> None:
    """Every kind of change, made by the kernel through a real overlay mount."""
    test_commit.build_lower(lower)
    outside = scratch / "outside"
    outside.mkdir(exist_ok=True)
    work, mnt = scratch / "work", scratch / "mnt"
    work.mkdir()
    mnt.mkdir()
    helpers.sh("mount", "-t", "overlay", "overlay", "-o",
               f"lowerdir={lower},upperdir={upper},workdir={work},"
               "redirect_dir=off,index=off,metacopy=off,xino=off", mnt)
    try:
        test_commit.mutate(mnt, outside)
    finally:
        helpers.sh("umount", mnt)


CASES: dict[str, Build] = {
    "whiteouts": case_whiteouts,
    "opaque": case_opaque,
    "xattrs": case_xattrs,
    "symlink_trap": case_symlink_trap,
    "hard_links": case_hard_links,
    "type_changes": case_type_changes,
    "new_things": case_new_things,
    "leftovers": case_leftovers_of_a_killed_commit,
    "real_overlay": case_real_overlay,
}


# -- helpers ------------------------------------------------------------------------------

class Stop(Exception):
    """Raised by a fault hook or a progress callback to stop apply_upper."""


def copy_tree(src: Path, dst: Path) -> Path:
    helpers.sh("cp", "-a", src, dst)  # hard links, xattrs, ACLs, devices, times, holes
    return dst


def temporaries(tree: Path) -> list[str]:
    """What apply_upper's sweep would remove, anywhere in TREE."""
    found = []
    for d, dirs, _files in os.walk(tree):
        ino = os.stat(d).st_ino
        with os.scandir(d) as it:
            found += [os.path.relpath(e.path, tree) for e in it if is_temporary(e.name, ino, e)]
        dirs[:] = [n for n in dirs if not is_temporary(n, ino)]
    return sorted(found)


def view(tree: Path) -> dict[str, Any]:
    """The snapshot minus temporaries (and what is inside them) and the hard-link groups."""
    tmp = temporaries(tree)
    return {k: v for k, v in helpers.snapshot(tree).items() if k != "<hardlinks>" and
            not any(k == t or k.startswith(t + "/") for t in tmp)}


def count_points(upper: Path, lower: Path) -> list[str]:
    points: list[str] = []
    apply_upper(str(upper), str(lower), fault=points.append)
    return points


def killed_at(upper: Path, lower: Path, n: int) -> bool:
    """Run apply_upper in a child process, SIGKILLed at its fault point N; False if it
    finished first."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            seen = 0

            def hook(what: str) -> None:
                nonlocal seen
                if seen == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                seen += 1

            apply_upper(str(upper), str(lower), fault=hook)
        finally:
            os._exit(3)  # not killed: reached only if point N was never reached
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3:
        return False
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
        f"the child died otherwise at point {n}: status {status:#x}"
    return True


def each_entry_old_or_new(state: dict[str, Any], old: dict[str, Any],
                          new: dict[str, Any]) -> list[str]:
    """Entries at real names that are neither as they were nor as they will be. Directories
    that existed before are applied entry by entry, so only their children count."""
    bad = []
    for path, entry in state.items():
        was, will = old.get(path), new.get(path)
        if is_dir(entry) and was is not None and is_dir(was):
            continue  # a directory that stays: its attributes are set last
        if entry != was and entry != will:
            bad.append(f"{path}: {entry!r} is neither {was!r} nor {will!r}")
    return bad


def is_dir(entry: dict[str, Any]) -> bool:
    return stat.S_ISDIR(int(entry["mode"], 8))


# The big case is stopped at every STRIDE-th point only (each trial copies 20 MiB).
STRIDE = {"real_overlay": 5}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, layers: tuple[Path, Path], root: Path
         ) -> tuple[Path, Path, int]:
    upper, lower = layers
    scratch = root / "scratch"
    scratch.mkdir()
    CASES[request.param](upper, lower, scratch)
    return upper, lower, STRIDE.get(request.param, 1)


# -- the tests ----------------------------------------------------------------------------

def test_killed_at_every_point_then_run_again(case: tuple[Path, Path, int],
                                              root: Path) -> None:
    upper, lower, stride = case
    old = view(lower)
    whole = copy_tree(lower, root / "whole")
    points = count_points(upper, whole)
    new = view(whole)
    assert temporaries(whole) == []
    assert len(points) > 2
    for n in range(0, len(points), stride):
        trial = copy_tree(lower, root / f"trial-{n}")
        assert killed_at(upper, trial, n), f"point {n} was never reached"
        bad = each_entry_old_or_new(view(trial), old, new)
        assert bad == [], f"killed at point {n} ({points[n]}):\n" + "\n".join(bad)
        apply_upper(str(upper), str(trial))
        problems = helpers.diff_snapshots(helpers.snapshot(whole), helpers.snapshot(trial))
        assert problems == [], f"killed at point {n} ({points[n]}), then run again:\n" + \
            "\n".join(problems)
        assert temporaries(trial) == []
        helpers.sh("rm", "-rf", trial)


def test_stopped_by_an_exception_at_every_point_then_run_again(
        case: tuple[Path, Path, int], root: Path) -> None:
    """The same through the error paths: the hook raises (cleanup code runs), or the
    progress callback does after N entries."""
    upper, lower, stride = case
    whole = copy_tree(lower, root / "whole")
    points = count_points(upper, whole)
    entries = apply_upper(str(upper), str(copy_tree(lower, root / "count"))).entries
    expected = helpers.snapshot(whole)
    stops = [("fault", n) for n in range(0, len(points), stride)]
    stops += [("progress", n) for n in range(1, entries + 1, stride)]
    for i, (how, n) in enumerate(stops):
        trial = copy_tree(lower, root / f"trial-{i}")
        seen = [0]

        def fault(what: str, n: int = n, seen: list[int] = seen) -> None:
            if seen[0] == n:
                raise Stop
            seen[0] += 1

        def progress(done: int, nbytes: int, n: int = n) -> None:
            if done == n:
                raise Stop

        with pytest.raises(Stop):
            if how == "fault":
                apply_upper(str(upper), str(trial), fault=fault)
            else:
                apply_upper(str(upper), str(trial), progress)
        apply_upper(str(upper), str(trial))
        problems = helpers.diff_snapshots(expected, helpers.snapshot(trial))
        assert problems == [], f"stopped by {how} at {n}, then run again:\n" + \
            "\n".join(problems)
        helpers.sh("rm", "-rf", trial)


def test_user_files_that_look_like_temporaries_are_kept(layers: tuple[Path, Path]) -> None:
    upper, lower = layers
    case_leftovers_of_a_killed_commit(upper, lower, lower)
    apply_upper(str(upper), str(lower))
    ino = os.stat(lower / "d").st_ino
    assert sorted(os.listdir(lower / "d")) == sorted(
        ["f", f"{TMP_PREFIX}{ino + 1}-0123abcd-2", f"{TMP_PREFIX}notes"])


def test_running_twice_changes_nothing_more(case: tuple[Path, Path, int]) -> None:
    upper, lower, _ = case
    apply_upper(str(upper), str(lower))
    once = helpers.snapshot(lower)
    apply_upper(str(upper), str(lower))
    assert helpers.diff_snapshots(once, helpers.snapshot(lower)) == []


def test_no_temporary_name_when_nothing_is_replaced(layers: tuple[Path, Path]) -> None:
    """A new file goes from an anonymous inode straight to its real name."""
    upper, lower = layers
    (upper / "f").write_text("f")
    seen: list[list[str]] = []
    apply_upper(str(upper), str(lower), fault=lambda what: seen.append(os.listdir(lower)))
    assert all(names in ([], ["f"]) for names in seen), seen


def test_e2fsck_is_clean_after_kills_on_ext4(root: Path) -> None:
    """The same kills on a real ext4 image: no orphan inode or other damage is left."""
    tree = root / "tree"
    tree.mkdir()
    upper = root / "upper"
    upper.mkdir()
    case_type_changes(upper, tree, root)
    case_hard_links(upper, tree, root)
    img = helpers.make_image(root / "disk.img", tree)
    mnt = root / "mnt"
    mnt.mkdir()
    helpers.sh("mount", "-o", "loop", img, mnt)
    try:
        points = count_points(upper, copy_tree(mnt, root / "count"))
        for n in range(0, len(points), 3):
            killed_at(upper, mnt, n)
        apply_upper(str(upper), str(mnt))
        assert temporaries(mnt) == []
    finally:
        helpers.sh("umount", mnt)
    r = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# -- a big new file, the process SIGKILLed from outside ----------------------------------

BIG = 200 << 20
CHILD = ("import sys\n"
         "from overlayd.host.merge import apply_upper\n"
         "print('go', flush=True)\n"
         "apply_upper(sys.argv[1], sys.argv[2])\n")


def partly_written(pid: int, dev: int) -> bool:
    """Whether process PID has a file of the image open, written in part."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if st.st_dev == dev and stat.S_ISREG(st.st_mode) and 0 < st.st_size < BIG:
            return True
    return False


@pytest.mark.parametrize("when", ["10 ms in", "at once", "part-written", "50 ms in",
                                  "200 ms in"])
def test_a_big_new_file_is_never_truncated_under_its_name(root: Path, when: str) -> None:
    """kill -9 of a commit writing a 200 MiB file that is new to an ext4 image: the file
    is absent or whole under its real name, and the next run sweeps what is left."""
    img = helpers.make_image(root / "disk.img", size="512M")
    upper, mnt = root / "upper", root / "mnt"
    upper.mkdir()
    mnt.mkdir()
    chunk = os.urandom(1 << 20)
    with open(upper / "big.bin", "wb") as f:
        for i in range(BIG >> 20):
            f.write(i.to_bytes(8, "little") + chunk[8:])
    want = helpers.sha256(upper / "big.bin")
    (upper / "small.txt").write_text("small\n")
    helpers.sh("mount", "-o", "loop", img, mnt)
    try:
        (mnt / "small.txt").write_text("old\n")
        dev = os.stat(mnt).st_dev
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(upper), str(mnt)],
                                stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
            if when == "part-written":
                while proc.poll() is None and not partly_written(proc.pid, dev):
                    pass
                caught = proc.poll() is None
            elif when != "at once":
                time.sleep(int(when.split()[0]) / 1000)
        finally:
            proc.kill()
            proc.wait()
        if when == "part-written":
            assert caught, "the copy was not seen half-done"
        names = [n for n in os.listdir(mnt) if n not in ("lost+found", "small.txt")]
        assert names in ([], ["big.bin"]), f"left under other names: {names}"
        if names:
            size = os.stat(mnt / "big.bin").st_size
            assert size == BIG, f"big.bin is there with {size >> 20} MiB of {BIG >> 20}"
            assert helpers.sha256(mnt / "big.bin") == want
        assert (mnt / "small.txt").read_text() in ("old\n", "small\n")

        apply_upper(str(upper), str(mnt))
        assert helpers.sha256(mnt / "big.bin") == want
        assert (mnt / "small.txt").read_text() == "small\n"
        assert sorted(os.listdir(mnt)) == ["big.bin", "lost+found", "small.txt"]
    finally:
        helpers.sh("umount", mnt)
    r = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
