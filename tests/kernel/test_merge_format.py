"""apply_upper on handcrafted upper layers: the format cases a live mount rarely makes.

Needs root (trusted.* xattrs, whiteout device nodes), hence in the real-kernel tier.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from overlayd.host.merge import ApplyError, apply_upper
from tests import helpers


@pytest.fixture
def layers(root: Path) -> tuple[Path, Path]:
    upper, lower = root / "upper", root / "lower"
    upper.mkdir()
    lower.mkdir()
    return upper, lower


def whiteout_dev(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def whiteout_xattr(path: Path) -> None:
    path.write_bytes(b"")
    os.setxattr(path, "trusted.overlay.whiteout", b"")


def test_both_whiteout_forms_delete(layers: tuple[Path, Path]) -> None:
    upper, lower = layers
    (lower / "a").write_text("a")
    (lower / "d").mkdir()
    (lower / "d" / "x").write_text("x")
    (lower / "b").write_text("b")
    whiteout_dev(upper / "a")
    whiteout_dev(upper / "d")
    (upper / "w").mkdir()
    os.setxattr(upper / "w", "trusted.overlay.opaque", b"x")  # "has xattr whiteouts"
    (lower / "w").mkdir()
    (lower / "w" / "gone").write_text("g")
    (lower / "w" / "stays").write_text("s")
    whiteout_xattr(upper / "w" / "gone")
    apply_upper(str(upper), str(lower))
    assert sorted(os.listdir(lower)) == ["b", "w"]
    assert sorted(os.listdir(lower / "w")) == ["stays"], "'x' is not opaque"


def test_opaque_y_replaces_the_directory(layers: tuple[Path, Path]) -> None:
    upper, lower = layers
    (lower / "d").mkdir()
    (lower / "d" / "old").write_text("o")
    (upper / "d").mkdir()
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    (upper / "d" / "new").write_text("n")
    apply_upper(str(upper), str(lower))
    assert os.listdir(lower / "d") == ["new"]
    assert "trusted.overlay.opaque" not in os.listxattr(lower / "d")


def test_internal_xattrs_stripped_escaped_kept(layers: tuple[Path, Path]) -> None:
    upper, lower = layers
    f = upper / "f"
    f.write_text("f")
    for name in ("trusted.overlay.origin", "trusted.overlay.impure", "trusted.overlay.nlink",
                 "trusted.overlay.upper", "trusted.overlay.protattr"):
        os.setxattr(f, name, b"internal")
    os.setxattr(f, "trusted.overlay.overlay.nested", b"user data")
    os.setxattr(f, "user.plain", b"p")
    os.setxattr(upper, "trusted.overlay.uuid", b"0123")
    apply_upper(str(upper), str(lower))
    assert sorted(os.listxattr(lower / "f")) == ["trusted.overlay.overlay.nested", "user.plain"]
    assert "trusted.overlay.uuid" not in os.listxattr(lower)


def test_symlinks_in_the_lower_are_never_followed(layers: tuple[Path, Path],
                                                  root: Path) -> None:
    upper, lower = layers
    outside = root / "outside"
    outside.mkdir()
    os.symlink(outside, lower / "trap")  # the lower has a symlink where upper has a dir
    (upper / "trap").mkdir()
    (upper / "trap" / "payload").write_text("p")
    apply_upper(str(upper), str(lower))
    assert os.listdir(outside) == []
    assert (lower / "trap").is_dir() and not (lower / "trap").is_symlink()


def test_replacing_a_file_keeps_other_hard_links_of_the_old_one(
        layers: tuple[Path, Path]) -> None:
    upper, lower = layers
    (lower / "a").write_text("old")
    os.link(lower / "a", lower / "b")
    (upper / "a").write_text("new")
    apply_upper(str(upper), str(lower))
    assert (lower / "a").read_text() == "new" and (lower / "b").read_text() == "old"


def test_failure_names_the_path_and_leaves_no_temporary(layers: tuple[Path, Path]) -> None:
    upper, lower = layers
    (lower / "x").mkdir()
    (upper / "x").mkdir()
    (upper / "x" / "f").write_text("f")
    # Root ignores permissions; a read-only bind mount (the test's own) refuses even root.
    helpers.sh("mount", "--bind", "-o", "ro", lower / "x", lower / "x")
    try:
        with pytest.raises(ApplyError) as exc:
            apply_upper(str(upper), str(lower))
        assert exc.value.relpath == "/x/f"
    finally:
        helpers.sh("umount", lower / "x")
    assert os.listdir(lower / "x") == []


def test_temporaries_of_a_killed_commit_are_swept(layers: tuple[Path, Path]) -> None:
    upper, lower = layers
    (lower / "d").mkdir()
    (lower / "d" / ".overlayd-commit-1234-7").write_text("half a file")  # a SIGKILLed run
    (lower / ".overlayd-commit-1234-8").write_text("another")
    (upper / "d").mkdir()
    (upper / "d" / "f").write_text("f")
    apply_upper(str(upper), str(lower))
    assert sorted(os.listdir(lower)) == ["d"]
    assert os.listdir(lower / "d") == ["f"]
