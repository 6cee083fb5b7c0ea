"""The Debian 12 guest of the root-on-overlay tests: a root tree with overlayd installed
as a package would install it, its initramfs (initramfs-tools, with overlayd's hook) built
by the guest's own update-initramfs, and qemu (TCG) booting it from an image file.

The pristine tree comes from tools/vm-root.sh (a tar cached per machine); everything of
overlayd is put in afresh for each test session, so the tests always run this checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REQUIRE_ENV = "OVERLAYD_REQUIRE_VM"

# The test's own guest-side program: run by a unit at the end of the boot, it does what the
# kernel command line's overlayd.test= says, prints PROBE lines on the console, then
# reboots or powers the guest off. Written into the guest by the test, not shipped.
PROBE = (Path(__file__).parent / "probe.sh").read_text()

PROBE_UNIT = """[Unit]
Description=overlayd root-on-overlay test probe
After=multi-user.target
ConditionKernelCommandLine=overlayd.test
[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/usr/local/sbin/overlayd-probe
[Install]
WantedBy=multi-user.target
"""


def unavailable(*, boot: bool) -> str | None:
    """Why the guest cannot be built (or, BOOT, booted) here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    tools = ("mmdebstrap", "debugfs", "e2fsck", "unshare") + (("qemu-system-x86_64",) if boot
                                                              else ())
    for tool in tools:
        if shutil.which(tool) is None:
            return f"needs {tool} (tools/setup.sh --vm installs it)"
    return None


def run(*cmd: str | os.PathLike[str], **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(c) for c in cmd], text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    assert r.returncode == 0, f"{cmd}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    return r  # type: ignore[no-any-return]


@dataclass
class Guest:
    """A guest root tree in WORK/root with overlayd installed, and its kernel and initrd."""

    work: Path
    kernel: Path = field(init=False)
    initrd: Path = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.work / "root"

    def build(self) -> Guest:
        t = time.monotonic()
        tar = run("bash", REPO / "tools/vm-root.sh").stdout.strip().splitlines()[-1]
        self.root.mkdir()
        run("tar", "-C", self.root, "-xf", tar)
        self.timings["tree"] = time.monotonic() - t
        t = time.monotonic()
        r = subprocess.run(["bash", str(REPO / "tools/install.sh")], cwd=REPO, text=True,
                           capture_output=True,
                           env={**os.environ, "DESTDIR": str(self.root),
                                "PIP": str(REPO / ".venv/bin/pip")})
        assert r.returncode == 0, r.stdout + r.stderr
        self.timings["install"] = time.monotonic() - t
        t = time.monotonic()
        self._configure()
        # the guest's own update-initramfs runs overlayd's hook, as on an installed system
        run("chroot", self.root, "update-initramfs", "-u")
        self.timings["initramfs"] = time.monotonic() - t
        self.kernel = max((self.root / "boot").glob("vmlinuz-*"))
        self.initrd = max((self.root / "boot").glob("initrd.img-*"))
        return self

    def _configure(self) -> None:
        r = self.root
        # a small initramfs with what a virtio guest needs (MODULES=most takes 18 s, 30 MB)
        conf = r / "etc/initramfs-tools/initramfs.conf"
        conf.write_text("".join("MODULES=list\n" if line.startswith("MODULES=") else line
                                for line in conf.read_text().splitlines(keepends=True)))
        (r / "etc/initramfs-tools/modules").write_text("virtio_pci\nvirtio_blk\next4\n")
        # an fstab as an installer writes it: systemd remounts / read-write from it
        (r / "etc/fstab").write_text("/dev/vda / ext4 errors=remount-ro 0 1\n")
        (r / "etc/hostname").write_text("guest\n")
        probe = r / "usr/local/sbin/overlayd-probe"
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(PROBE)
        probe.chmod(0o755)
        unit = r / "etc/systemd/system/overlayd-probe.service"
        unit.write_text(PROBE_UNIT)
        wants = r / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / unit.name).symlink_to("/etc/systemd/system/overlayd-probe.service")
        # no getty on the serial console: it would print over the probe's lines
        (r / "etc/systemd/system/serial-getty@ttyS0.service").symlink_to("/dev/null")

    def make_image(self, path: Path) -> Path:
        """An ext4 image of the root tree, as the guest's disk."""
        run("mkfs.ext4", "-q", "-F", "-L", "root", "-d", self.root, path, "1500M")
        return path


@dataclass
class Boot:
    rc: int
    log: str
    seconds: float

    def probe(self, key: str) -> str:
        """The rest of the first console line 'PROBE KEY...'."""
        for line in self.log.splitlines():
            line = line.strip("\r")
            i = line.find(f"PROBE {key}")
            if i >= 0:
                return line[i + len(f"PROBE {key}"):].strip()
        raise AssertionError(f"no 'PROBE {key}' line on the console:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.splitlines()[-n:])


def boot(guest: Guest, image: Path, *args: str, timeout: int = 240) -> Boot:
    """Boot the guest from IMAGE under TCG until it powers off or reboots (-no-reboot)."""
    t = time.monotonic()
    log = image.with_suffix(f".{len(list(image.parent.glob('*.log')))}.log")
    with open(log, "wb") as out:
        p = subprocess.run(
            ["timeout", "-k", "5", str(timeout), "qemu-system-x86_64", "-accel", "tcg",
             "-m", "1024", "-smp", "1", "-nographic", "-no-reboot",
             "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
             "-drive", f"file={image},format=raw,if=virtio",
             "-append", "console=ttyS0 root=/dev/vda ro panic=-1 quiet "
                        "systemd.show_status=false " + " ".join(args)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False)
    return Boot(p.returncode, log.read_bytes().decode(errors="replace"),
                time.monotonic() - t)


def image_cat(image: Path, path: str) -> str | None:
    r = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                       text=True, check=False)
    r2 = subprocess.run(["debugfs", "-R", f"stat {path}", str(image)], capture_output=True,
                        text=True, check=False)
    if "File not found" in r2.stderr or "File not found" in r2.stdout:
        return None
    return r.stdout
