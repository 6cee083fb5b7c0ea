"""Commit merges the upper into the image exactly as the merged view showed it.

One tree exercises the whole overlayfs format: whiteouts, opaque directories, type
changes, renames, hard links (kept and broken), symlinks (never followed), fifos,
sockets and device nodes, owner, mode with setuid/sticky, timestamps, xattrs of every
namespace (escaped trusted.overlay.* included), ACLs, file capabilities, sparse files.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

from tests import helpers
from tests.kernel.conftest import Env

PER_UPPER = True
PER_ENGINE = True  # and with engine = "fuse" (fuse-overlayfs over the same layers)

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x1, 0x2, 0x4, 0x10, 0x20
NO_ID = 0xFFFFFFFF


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A system.posix_acl_* xattr value: version 2, then (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def acl_for(uid: int, perm: int = 6) -> bytes:
    return acl((ACL_USER_OBJ, 6, NO_ID), (ACL_USER, perm, uid), (ACL_GROUP_OBJ, 4, NO_ID),
               (ACL_MASK, 6, NO_ID), (ACL_OTHER, 4, NO_ID))


# A file capability (VFS_CAP_REVISION_2, effective) granting cap_net_raw.
FILE_CAP = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def build_lower(tree: Path) -> None:
    def w(rel: str, text: str = "x") -> Path:
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    for rel in ("keep.txt", "modify.txt", "chmod.txt", "chown.txt", "delete.txt", "times.txt",
                "file2dir", "file2link", "renamed_src", "xattr.txt", "acl.txt", "hl_a"):
        w(rel, f"lower {rel}\n")
    os.link(tree / "hl_a", tree / "hl_b")
    w("deldir/a/b.txt"), w("deldir/c.txt")
    w("opaque/a.txt"), w("opaque/b.txt")
    w("dir2file/inner.txt")
    w("rdir/one.txt"), w("rdir/deep/two.txt")
    w("sub/inner.txt")
    w("esc/child.txt")
    os.symlink("keep.txt", tree / "link2file")
    os.setxattr(tree / "xattr.txt", "user.keep", b"k")
    os.setxattr(tree / "acl.txt", "system.posix_acl_access", acl_for(1000))
    (tree / "defacl").mkdir()
    os.setxattr(tree / "defacl", "system.posix_acl_default", acl_for(4242, 4))
    (tree / "sgid").mkdir()
    os.chown(tree / "sgid", 0, 4321)
    (tree / "sgid").chmod(0o2775)


def mutate(mp: Path, outside: Path, *, fuse: bool = False) -> None:
    """What a user does in the merged view: every kind of change."""
    (mp / "modify.txt").write_text("changed content\n")
    (mp / "chmod.txt").chmod(0o600)
    os.chown(mp / "chown.txt", 1234, 5678)
    (mp / "delete.txt").unlink()
    shutil.rmtree(mp / "deldir")
    shutil.rmtree(mp / "opaque")
    (mp / "opaque").mkdir()
    (mp / "opaque" / "c.txt").write_text("only c\n")
    (mp / "file2dir").unlink()
    (mp / "file2dir").mkdir()
    (mp / "file2dir" / "child").write_text("child\n")
    shutil.rmtree(mp / "dir2file")
    (mp / "dir2file").write_text("now a file\n")
    (mp / "file2link").unlink()
    os.symlink("modify.txt", mp / "file2link")
    (mp / "link2file").unlink()
    (mp / "link2file").write_text("was a symlink\n")
    if not fuse:
        # fuse-overlayfs 1.10 copies a lower hard link up under the name it saw first
        # (hl_b here): the write through hl_a lands in the upper as hl_b (README).
        (mp / "hl_a").write_text("hl_a changed; hl_b keeps the old content\n")
    os.setxattr(mp / "xattr.txt", "user.new", b"n")
    os.removexattr(mp / "xattr.txt", "user.keep")
    os.setxattr(mp / "acl.txt", "system.posix_acl_access", acl_for(2000))
    (mp / "sub").chmod(0o700)
    os.utime(mp / "sub" / "inner.txt", ns=(1_000_000_000_123, 2_000_000_000_456))
    os.utime(mp / "times.txt", ns=(3_000_000_000_000, 4_000_000_000_789))
    os.rename(mp / "renamed_src", mp / "renamed_dst")
    shutil.move(mp / "rdir", mp / "rdir_moved")  # EXDEV without redirect_dir: copy + delete
    shutil.rmtree(mp / "esc")
    os.symlink(outside, mp / "esc")  # a symlink to outside the image: never followed
    (mp / "new" / "1" / "2" / "3").mkdir(parents=True)
    (mp / "new" / "1" / "2" / "3" / "deep.txt").write_text("deep\n")
    (mp / "empty").write_bytes(b"")
    (mp / "random.bin").write_bytes(os.urandom(3 << 20))
    suid = mp / "suid-bin"
    suid.write_bytes(b"#!/bin/sh\n")
    suid.chmod(0o4755)
    (mp / "sticky").mkdir()
    (mp / "sticky").chmod(0o1777)
    os.mkfifo(mp / "fifo")
    os.mknod(mp / "chardev", stat.S_IFCHR | 0o644, os.makedev(1, 3))
    os.mknod(mp / "blockdev", stat.S_IFBLK | 0o600, os.makedev(7, 250))
    os.mknod(mp / "socket", stat.S_IFSOCK | 0o755)
    os.symlink("/nonexistent/target", mp / "dangling")
    with open(mp / "sparse.bin", "wb") as f:
        f.write(b"A" * 4096)
        f.seek(8 << 20)
        f.write(b"B" * 4096)
        f.truncate(16 << 20)
    (mp / "link1").write_text("two names, one inode\n")
    os.link(mp / "link1", mp / "new" / "link2")
    (mp / "capfile").write_bytes(b"\x7fELF")
    os.setxattr(mp / "capfile", "security.capability", FILE_CAP)
    os.setxattr(mp / "keep.txt", "trusted.mine", b"t")  # copy-up for an xattr alone
    if not fuse:  # fuse-overlayfs refuses trusted.overlay.* names (EPERM): no nesting
        os.setxattr(mp / "modify.txt", "trusted.overlay.nested", b"escaped")
    (mp / "defacl" / "inherits.txt").write_text("inherits the default ACL\n")
    (mp / "defacl" / "no-acl.txt").write_text("its inherited ACL removed\n")
    os.removexattr(mp / "defacl" / "no-acl.txt", "system.posix_acl_access")
    (mp / "sgid" / "root-group.txt").write_text("group reset to root in a setgid dir\n")
    os.chown(mp / "sgid" / "root-group.txt", 0, 0)
    (mp / "sgid" / "inherited").mkdir()  # gets group 4321 and setgid from its parent
    os.chown(mp / "new", 7, 8)


def comparable(snap: dict[str, object], fuse: bool) -> dict[str, object]:
    """fuse-overlayfs gives every file one st_dev, so an upper file and a lower one can
    share an inode number and look like hard links: a FUSE view's hard links are left
    out (they are compared where the files all come from one file system)."""
    return {k: v for k, v in snap.items() if k != "<hardlinks>"} if fuse else snap


def test_commit_applies_every_kind_of_change(env: Env, root: Path) -> None:
    tree = root / "tree"
    tree.mkdir()
    build_lower(tree)
    img = helpers.make_image(root / "disk.img", tree)
    outside = root / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("must stay\n")
    rec = env.create("full", img, size="64M")
    mp = Path(rec.mountpoint)
    fuse = env.engine == "fuse"
    mutate(mp, outside, fuse=fuse)
    before = helpers.snapshot(mp)

    stats = env.run(env.manager.commit("full"))
    assert stats.entries > 40 and stats.bytes >= 3 << 20

    assert rec.state.value == "active"
    assert os.listdir(env.paths(rec).upper_dir) == [], "the overlay comes back on a fresh upper"
    assert env.run(env.manager.diff("full")) == []
    after = helpers.snapshot(mp)
    # FUSE: the hard links are compared on the committed view (all from the image),
    # against the image itself below.
    problems = helpers.diff_snapshots(comparable(before, fuse), comparable(after, fuse))
    assert problems == [], "merged view after commit differs:\n" + "\n".join(problems)
    if fuse:
        before = after
    else:
        assert (mp / "hl_b").read_text() == "lower hl_a\n"
    assert sorted(os.listdir(outside)) == ["victim.txt"]
    env.run(env.manager.discard("full"))

    # The image itself, mounted directly: the same tree, no overlay bookkeeping in it.
    assert subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True).returncode == 0
    check = root / "check"
    check.mkdir()
    helpers.sh("mount", "-o", "ro,loop", img, check)
    try:
        raw = helpers.snapshot(check, unescape=True)
        st = os.stat(check / "sparse.bin")
        tmp_names = [p for p in raw if ".overlayd-commit-" in p]
    finally:
        helpers.sh("umount", check)
    problems = helpers.diff_snapshots(before, raw)
    assert problems == [], "image differs from the merged view:\n" + "\n".join(problems)
    assert st.st_blocks * 512 < 1 << 20, "the sparse file kept its holes"
    assert tmp_names == []


def test_commit_twice_and_write_after(env: Env, image: Path) -> None:
    rec = env.create("again", image)
    mp = Path(rec.mountpoint)
    (mp / "one").write_text("1")
    env.run(env.manager.commit("again"))
    (mp / "two").write_text("2")
    (mp / "one").unlink()
    env.run(env.manager.commit("again"))
    (mp / "three").write_text("3")
    env.run(env.manager.discard("again"))
    rec2 = env.create("again", image)
    names = sorted(os.listdir(rec2.mountpoint))
    assert "two" in names and "one" not in names and "three" not in names
    env.run(env.manager.discard("again"))


def test_commit_with_nothing_to_do(env: Env, image: Path) -> None:
    rec = env.create("idle", image)
    before = helpers.snapshot(rec.mountpoint)
    stats = env.run(env.manager.commit("idle"))
    assert (stats.entries, stats.bytes) == (0, 0)
    assert helpers.diff_snapshots(before, helpers.snapshot(rec.mountpoint)) == []
    env.run(env.manager.discard("idle"))
