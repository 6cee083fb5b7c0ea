"""`make demo`: the question overlayd answers, step by step, through the daemon.

"Can I mount a disk image read-only, send every write to RAM, then keep or throw those
writes away?" The demo starts ``overlayd --standalone`` (its own private bus), drives it
with ``busctl`` for some steps and ``overlayctl`` for others, printing each command, and
reads the image with ``debugfs`` straight from the file, without mounting it. Everything
lives under a temporary directory; at the end nothing is left running or mounted.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from overlayd.host.mounttable import read_mounts

BIN = Path(sys.executable).parent
MANAGER = ["org.overlayd.Overlayd1", "/org/overlayd/Overlayd1", "org.overlayd.Overlayd1.Manager"]
OVERLAY_PATH = "/org/overlayd/Overlayd1/overlay/demo"
STEP = 0


def step(title: str) -> None:
    global STEP
    STEP += 1
    print(f"\n==> {STEP}. {title}")


def show(text: str) -> None:
    print(textwrap.indent(text.rstrip("\n"), "    "))


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = dict(os.environ)
        self.daemon: subprocess.Popen[str] | None = None

    def run(self, *argv: str, quiet: bool = False) -> str:
        shown = [a.replace(str(self.root), "$DEMO").replace(f"{BIN}/", "") for a in argv]
        if not quiet:
            print(f"    $ {shlex.join(shown)}")
        r = subprocess.run(argv, env=self.env, text=True, capture_output=True, check=False)
        out = (r.stdout + r.stderr).strip().replace(str(self.root), "$DEMO")
        if out and not quiet:
            show(textwrap.indent(out, "  "))
        if r.returncode != 0:
            raise SystemExit(f"overlayd demo: {argv[0]} failed ({r.returncode})")
        return r.stdout

    def busctl(self, *args: str) -> str:
        return self.run("busctl", "--system", "call", *MANAGER, *args)

    def overlayctl(self, *args: str) -> str:
        return self.run(str(BIN / "overlayctl"), *args)

    def start_daemon(self) -> None:
        log = open(self.root / "overlayd.log", "w")  # noqa: SIM115 - lives as long as the daemon
        self.daemon = subprocess.Popen(
            [str(BIN / "overlayd"), "--standalone", "--runtime-dir", str(self.root / "run")],
            stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.daemon.stdout is not None
        line = self.daemon.stdout.readline().strip()
        if not line.startswith("DBUS_SYSTEM_BUS_ADDRESS="):
            raise SystemExit(f"overlayd demo: overlayd did not start:\n{self.log()}")
        self.env["DBUS_SYSTEM_BUS_ADDRESS"] = line.split("=", 1)[1]
        show(f"$ overlayd --standalone --runtime-dir $DEMO/run &\n{line}")

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)  # ours, by PID
            self.daemon.wait(timeout=30)

    def log(self) -> str:
        path = self.root / "overlayd.log"
        return path.read_text().replace(str(self.root), "$DEMO") if path.exists() else ""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def debugfs(image: Path, request: str) -> str:
    r = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True)
    return r.stdout


def image_files(image: Path) -> str:
    names = []
    for line in debugfs(image, "ls -l /").splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[-1] not in (".", "..", "lost+found"):
            names.append(parts[-1])
    return ", ".join(sorted(names))


def our_mounts(root: Path) -> list[str]:
    return [f"{m.target.replace(str(root), '$DEMO')}  {m.fstype}  source={m.source}"
            for m in read_mounts() if m.target.startswith(str(root))]


def story(demo: Demo) -> None:
    root = demo.root
    step("Make an ext4 image holding two files")
    tree = root / "content"
    tree.mkdir()
    (tree / "notes.txt").write_text("written when the image was made\n")
    (tree / "old.txt").write_text("this file will be deleted\n")
    image = root / "disk.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    demo.run("mkfs.ext4", "-q", "-F", "-d", str(tree), str(image))
    original = sha(image)
    show(f"files in the image: {image_files(image)}\nsha256 of the image: {original}")

    step("Start overlayd on a private bus (no system bus needed)")
    demo.start_daemon()

    step("Create overlay 'demo' over D-Bus: the image read-only, 64 MiB of RAM for writes")
    demo.busctl("Create", "sa{sv}", "demo", "2", "image", "s", str(image),
                "size", "t", str(64 << 20))
    demo.overlayctl("status", "demo")
    mp = root / "run" / "mnt" / "demo"
    show("mounts:\n  " + "\n  ".join(our_mounts(root)))

    step("Write, change and delete files in the mount point")
    (mp / "notes.txt").write_text("changed in RAM\n")
    (mp / "new.txt").write_text("a new file, only in RAM for now\n")
    (mp / "old.txt").unlink()
    (mp / "photos").mkdir()
    (mp / "photos" / "cat.jpg").write_bytes(os.urandom(256 << 10))
    show(f"ls $DEMO/run/mnt/demo: {', '.join(sorted(os.listdir(mp)))}\n"
         f"notes.txt now reads: {(mp / 'notes.txt').read_text().strip()!r}")

    step("The image is untouched")
    os.sync()
    verdict = "unchanged" if sha(image) == original else "CHANGED!"
    show(f"sha256 of the image: {sha(image)} ({verdict})\nfiles in the image: "
         f"{image_files(image)}")

    step("What changed (overlayctl diff)")
    demo.overlayctl("diff", "demo")

    step("Commit: merge the RAM writes into the image, as a job (busctl)")
    job = demo.busctl("StartCommit", "sa{sv}", "demo", "0").split('"')[1]
    show("(StartCommit answers at once; the job object lives until the commit has ended)")
    while subprocess.run(["busctl", "--system", "get-property", MANAGER[0], job,
                          "org.overlayd.Overlayd1.Job", "Progress"], env=demo.env,
                         capture_output=True).returncode == 0:
        time.sleep(0.1)
    demo.run("busctl", "--system", "get-property", MANAGER[0], OVERLAY_PATH,
             "org.overlayd.Overlayd1.Overlay", "LastError", "UpperUsage")

    step("The image now holds the changes (read from the image file)")
    committed = sha(image)
    show(f"sha256 of the image: {committed}\nfiles in the image: {image_files(image)}\n"
         f"notes.txt in the image: {debugfs(image, 'cat /notes.txt').strip()!r}")
    demo.overlayctl("diff", "demo")
    show("(nothing left in RAM: the overlay runs on over the updated image)")

    step("Write again, then Discard (overlayctl)")
    (mp / "scratch.txt").write_text("thrown away soon\n")
    (mp / "notes.txt").write_text("this change will be discarded\n")
    show(f"ls $DEMO/run/mnt/demo: {', '.join(sorted(os.listdir(mp)))}")
    demo.overlayctl("discard", "demo")

    step("Those writes are gone, and nothing is left")
    os.sync()
    same = "same as after the commit" if sha(image) == committed else "CHANGED!"
    show(f"sha256 of the image: {sha(image)} ({same})\n"
         f"notes.txt in the image: {debugfs(image, 'cat /notes.txt').strip()!r}")
    demo.busctl("ListOverlays")
    demo.stop_daemon()
    show(f"overlayd stopped (exit status {demo.daemon.returncode if demo.daemon else '?'}); "
         f"its log:\n" + textwrap.indent(demo.log(), "  "))
    show(f"mounts under the demo directory: {our_mounts(root) or 'none'}\n"
         f"mount point exists: {mp.exists()}")


def main() -> int:
    if os.geteuid() != 0:
        print("overlayd demo: run as root (it makes loop devices and mounts).", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="overlayd-demo-", dir="/var/tmp"))
    print("overlayd: a disk image read-only, every write in RAM, then keep or throw them away.")
    print(f"($DEMO is {root})")
    demo = Demo(root)
    try:
        story(demo)
    finally:
        if demo.daemon is not None and demo.daemon.poll() is None:
            demo.busctl("ListOverlays")  # after a failure: discard what the demo made
            for name in demo.run("busctl", "--system", "call", *MANAGER, "ListOverlays",
                                 quiet=True).split('"')[1::4]:
                demo.run("busctl", "--system", "call", *MANAGER, "Discard", "sa{sv}", name,
                         "1", "force", "b", "true", quiet=True)
            demo.stop_daemon()
        shutil.rmtree(root, ignore_errors=True)
    print("\nDone: overlayd stopped, nothing mounted, the demo directory removed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
