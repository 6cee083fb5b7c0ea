"""Every file system DESIGN.md names, detected from its superblock and used as a lower."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from overlayd.errors import CommitFailed
from tests import helpers
from tests.kernel.conftest import Env

MKFS = {"ext2": "mkfs.ext2", "ext3": "mkfs.ext3", "ext4": "mkfs.ext4", "xfs": "mkfs.xfs",
        "btrfs": "mkfs.btrfs", "squashfs": "mksquashfs", "erofs": "mkfs.erofs"}
SIZES = {"xfs": "320M", "btrfs": "128M"}


@pytest.mark.parametrize("fstype", list(MKFS))
def test_each_file_system(env: Env, root: Path, fstype: str) -> None:
    assert shutil.which(MKFS[fstype]), f"{MKFS[fstype]} is installed by tools/setup.sh"
    tree = root / "tree"
    tree.mkdir()
    (tree / "f.txt").write_text("in the image\n")
    img = helpers.make_image(root / f"{fstype}.img", tree, fstype=fstype,
                             size=SIZES.get(fstype, "64M"))
    rec = env.create("fs", img)
    assert rec.fstype == fstype
    mp = Path(rec.mountpoint)
    (mp / "new.txt").write_text("new\n")
    if fstype in ("squashfs", "erofs"):
        with pytest.raises(CommitFailed):
            env.run(env.manager.commit("fs"))
    else:
        env.run(env.manager.commit("fs"))
        assert os.listdir(env.paths(rec).upper_dir) == []
        assert (mp / "new.txt").read_text() == "new\n"
    env.run(env.manager.discard("fs"))
