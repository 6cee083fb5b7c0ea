"""`make demo`: the question overlayd answers, step by step, on the real kernel.

"Can I mount a disk image read-only, send every write to RAM, then keep or throw those
writes away?" Everything happens under a temporary directory that the demo removes;
the image's content is read straight from the image file with debugfs, without a mount.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from overlayd.config import DaemonConfig
from overlayd.host.linux import LinuxHost
from overlayd.host.mountinfo import read_mounts
from overlayd.manager import OverlayManager
from overlayd.model import parse_spec

STEP = 0


def step(title: str) -> None:
    global STEP
    STEP += 1
    print(f"\n==> {STEP}. {title}")


def show(text: str) -> None:
    print(textwrap.indent(text.rstrip("\n"), "    "))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def image_listing(image: Path) -> str:
    """The root directory and one file of IMAGE, read by debugfs from the file itself."""
    out = subprocess.run(["debugfs", "-R", "ls -l /", str(image)], capture_output=True,
                         text=True, check=True).stdout
    rows = [" ".join(line.split()[5:]) if len(line.split()) > 5 else line
            for line in out.splitlines() if line.strip()]
    names = sorted(r.split()[-1] for r in rows if r.split()[-1] not in (".", "..", "lost+found"))
    return ", ".join(names)


def image_file(image: Path, name: str) -> str:
    r = subprocess.run(["debugfs", "-R", f"cat /{name}", str(image)], capture_output=True,
                       text=True)
    return r.stdout.strip()


def our_mounts(root: Path) -> list[str]:
    return [f"{m.target.replace(str(root), '$DEMO')}  {m.fstype:8} source={m.source}  "
            f"{','.join(m.options)}" for m in read_mounts() if m.target.startswith(str(root))]


async def story(root: Path) -> None:
    step("Make an ext4 image holding a file (mkfs.ext4 -d, 32 MiB)")
    tree = root / "content"
    tree.mkdir()
    (tree / "notes.txt").write_text("written when the image was made\n")
    (tree / "old.txt").write_text("this file will be deleted\n")
    image = root / "disk.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image)], check=True)
    show(f"image: {image}\nfiles in the image: {image_listing(image)}\n"
         f"sha256 of the image: {sha(image)}")
    original = sha(image)

    step("Create overlay 'demo': the image read-only, a 64 MiB tmpfs for the writes")
    mgr = OverlayManager(DaemonConfig(runtime_dir=root / "run"), LinuxHost())
    await mgr.start()
    rec = await mgr.create(parse_spec({"name": "demo", "image": str(image), "size": "64M"}))
    mp = Path(rec.mountpoint)
    show(f"mount point: {mp}\nloop device: {rec.loop_device} (read-only, autoclear)\n"
         "mounts ($DEMO = " + str(root) + "):\n  " + "\n  ".join(our_mounts(root)))

    step("Write, change and delete files in the mount point")
    (mp / "notes.txt").write_text("changed in RAM\n")
    (mp / "new.txt").write_text("a new file, only in RAM for now\n")
    (mp / "old.txt").unlink()
    (mp / "photos").mkdir()
    (mp / "photos" / "cat.jpg").write_bytes(os.urandom(256 << 10))
    show(f"ls {mp}: {', '.join(sorted(os.listdir(mp)))}\n"
         f"notes.txt now reads: {(mp / 'notes.txt').read_text().strip()!r}")
    usage = await mgr.usage("demo")
    show(f"RAM used by the writes: {usage.used // 1024} KiB of {usage.size >> 20} MiB")

    step("The image is untouched")
    os.sync()
    verdict = "unchanged" if sha(image) == original else "CHANGED!"
    show(f"sha256 of the image: {sha(image)} ({verdict})\n"
         f"files in the image: {image_listing(image)}")

    step("What changed (Diff)")
    show("\n".join(f"{d.kind:9} {d.path}" for d in await mgr.diff("demo")))

    step("Commit: merge the RAM writes into the image")
    stats = await mgr.commit("demo")
    show(f"{stats.entries} entries, {stats.bytes} bytes written in {stats.seconds * 1000:.1f} ms; "
         "the overlay is mounted again over the updated image, with an empty upper")

    step("The image now holds the changes (read from the image file)")
    show(f"sha256 of the image: {sha(image)}\nfiles in the image: {image_listing(image)}\n"
         f"notes.txt in the image: {image_file(image, 'notes.txt')!r}\n"
         f"changes left in RAM: {len(await mgr.diff('demo'))}")
    committed = sha(image)

    step("Write again, then Discard")
    (mp / "scratch.txt").write_text("thrown away soon\n")
    (mp / "notes.txt").write_text("this change will be discarded\n")
    show(f"ls {mp}: {', '.join(sorted(os.listdir(mp)))}")
    await mgr.discard("demo")
    show("discarded")

    step("Those writes are gone, and nothing is left mounted")
    os.sync()
    show(f"sha256 of the image: {sha(image)} "
         f"({'same as after the commit' if sha(image) == committed else 'CHANGED!'})\n"
         f"files in the image: {image_listing(image)}\n"
         f"notes.txt in the image: {image_file(image, 'notes.txt')!r}\n"
         f"mounts under the demo directory: {our_mounts(root) or 'none'}\n"
         f"mount point {mp} exists: {mp.exists()}\n"
         f"loop device {rec.loop_device} backing file: "
         f"{LinuxHost().loop_backing(rec.loop_device) or 'none (detached)'}")


def main() -> int:
    if os.geteuid() != 0:
        print("overlayd demo: run as root (it makes loop devices and mounts).", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="overlayd-demo-", dir="/var/tmp"))
    print("overlayd: a disk image read-only, every write in RAM, then keep or throw them away.")
    try:
        asyncio.run(story(root))
    finally:
        leftovers = [m.target for m in read_mounts() if m.target.startswith(str(root))]
        for target in reversed(leftovers):  # only after a failure: our own demo mounts
            subprocess.run(["umount", "-l", target], check=False)
        shutil.rmtree(root, ignore_errors=True)
    print("\nDone: the demo directory is removed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
