"""`overlayd-merge UPPER TARGET`, the commit at shutdown of a protected root, without a VM:
a real overlay over an ext4 image makes the upper (the kernel's own format), then the
entry point applies it to the image mounted read-write, as the exitrd does. It runs as the
exitrd runs it: `python3 -IS`, no site, so nothing but the standard library and overlayd's
merge code may be needed. The image is checked from outside with debugfs and e2fsck."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import make_image

REPO = Path(__file__).resolve().parents[2]

# Runs in a private mount namespace (unshare): nothing it mounts is seen, or left, outside.
SCRIPT = r"""
set -euo pipefail
W=$1 MERGE=$2 FILL=$3
cd "$W"
mkdir -p lower ovl upperfs merged target
LOOP=$(losetup -f --show -r image.ext4)
cleanup() {
    set +e
    for m in merged upperfs lower target; do mountpoint -q "$W/$m" && umount "$W/$m"; done
    [ -z "$LOOP" ] || losetup -d "$LOOP"
    return 0
}
trap cleanup EXIT
mount -o ro "$LOOP" lower
mount -t tmpfs overlayd-root upperfs
mkdir upperfs/upper upperfs/work
mount -t overlay -o lowerdir=lower,upperdir=upperfs/upper,workdir=upperfs/work \
    -o redirect_dir=off,index=off,metacopy=off,xino=off overlayd-root merged
# a user's writes: new files and trees, a change, deletions, an opaque directory
echo new >merged/etc/new
mkdir -p merged/var/lib/app/sub && echo deep >merged/var/lib/app/sub/file
echo changed >merged/etc/hostname
rm merged/etc/issue
rm -r merged/old
mkdir merged/old && echo fresh >merged/old/only
ln -s /etc/new merged/etc/link
[ "$FILL" = 0 ] || head -c "$FILL" /dev/urandom >merged/big
umount merged
umount lower
losetup -d "$LOOP"
LOOP=
LOOP=$(losetup -f --show image.ext4)
mount "$LOOP" target
set +e
"$MERGE" upperfs/upper target
echo "rc=$?"
set -e
umount target
losetup -d "$LOOP"
LOOP=
"""


def merge_into(tmp: Path, fill: int = 0, size: str = "32M") -> subprocess.CompletedProcess[str]:
    seed = tmp / "seed"
    (seed / "etc").mkdir(parents=True)
    (seed / "etc/issue").write_text("Debian\n")
    (seed / "etc/hostname").write_text("host\n")
    (seed / "old").mkdir()
    (seed / "old/a").write_text("a\n")
    (seed / "old/b").write_text("b\n")
    make_image(tmp / "image.ext4", seed, size=size)
    merge = tmp / "overlayd-merge"
    # the installed wrapper's way: python3 -IS, the package put first on sys.path
    merge.write_text(f"#!{sys.executable} -IS\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                     "from overlayd.offline import main\nsys.exit(main())\n")
    merge.chmod(0o755)
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                           SCRIPT, "script", str(tmp), str(merge), str(fill)],
                          text=True, capture_output=True, check=False)


def cat(image: Path, path: str) -> str | None:
    r = subprocess.run(["debugfs", "-R", f"stat {path}", str(image)], text=True,
                       capture_output=True, check=False)
    if "File not found" in r.stdout + r.stderr:
        return None
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], text=True,
                          capture_output=True, check=True).stdout


def fsck_clean(image: Path) -> bool:
    return subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True,
                          check=False).returncode == 0


def test_applies_an_upper_to_the_root_image(tmp_path: Path) -> None:
    r = merge_into(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rc=0" in r.stdout, r.stdout + r.stderr
    assert "overlayd-merge: applied" in r.stdout
    img = tmp_path / "image.ext4"
    assert cat(img, "/etc/new") == "new\n"
    assert cat(img, "/var/lib/app/sub/file") == "deep\n"
    assert cat(img, "/etc/hostname") == "changed\n"
    assert cat(img, "/etc/issue") is None
    assert cat(img, "/old/a") is None  # the opaque directory replaced the old one
    assert cat(img, "/old/only") == "fresh\n"
    link = subprocess.run(["debugfs", "-R", "stat /etc/link", str(img)], text=True,
                          capture_output=True, check=True).stdout
    assert 'Fast link dest: "/etc/new"' in link
    assert cat(img, "/var/lib/overlayd/root-commit.failed") is None
    assert fsck_clean(img)


def test_a_full_disk_leaves_a_clean_file_system_and_a_report(tmp_path: Path) -> None:
    r = merge_into(tmp_path, fill=40 << 20, size="32M")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rc=1" in r.stdout, r.stdout + r.stderr
    assert "No space left on device" in r.stdout
    img = tmp_path / "image.ext4"
    report = cat(img, "/var/lib/overlayd/root-commit.failed")
    assert report is not None and "stopped at /big: No space left on device" in report
    assert fsck_clean(img)


def offline(*args: str) -> subprocess.CompletedProcess[str]:
    """overlayd.offline.main(ARGS) as the exitrd runs it: python3 -IS."""
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            f"from overlayd.offline import main; sys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-IS", "-c", code], text=True,
                          capture_output=True, check=False)


def test_usage() -> None:
    r = offline("x")
    assert r.returncode == 2 and "usage: overlayd-merge" in r.stderr


def test_lists_only_the_standard_library_and_its_own_modules() -> None:
    r = offline("--list-files")
    assert r.returncode == 0, r.stderr
    files = r.stdout.split()
    ours = {Path(f).relative_to(REPO).as_posix() for f in files if f.startswith(str(REPO) + "/")
            and "__pycache__" not in f}
    assert ours == {"overlayd/__init__.py", "overlayd/offline.py", "overlayd/host/__init__.py",
                    "overlayd/host/merge.py", "overlayd/host/ovlformat.py",
                    "overlayd/host/syscalls.py"}
    assert not [f for f in files if "site-packages" in f or "pydantic" in f]
