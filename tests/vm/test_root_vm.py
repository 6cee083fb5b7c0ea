"""The root file system on an overlay, in a VM: the Debian 12 guest boots from an ext4 image
(qemu, TCG) through its own initramfs-tools initramfs with overlayd's hook, and systemd as
PID 1; the guest's probe unit writes and deletes files as a user would, asks the daemon
(bus-activated in the guest) about the overlay `root`, and reboots or powers off. The host
then reads the image with debugfs and e2fsck. One image, three boots in a row:

1. `overlayd.root=tmpfs`, write, reboot: the image is byte-identical;
2. the same, then `Commit root {at_shutdown: true}` over the bus and power off: the exitrd
   wrote the changes (deleted file gone), e2fsck is clean;
3. `overlayd.root=off`: the root is the plain, writable file system, RootOverlay is "/".
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import sha256
from tests.vm.guest import Boot, Guest, boot, image_cat

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("qemu")]  # the gate first


@pytest.fixture(scope="module")
def image(qemu: None, guest: Guest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Path]:
    yield guest.make_image(tmp_path_factory.mktemp("vm") / "root.img")


def booted(boot_: Boot) -> Boot:
    assert boot_.rc == 0, f"qemu rc={boot_.rc} after {boot_.seconds:.0f} s:\n{boot_.tail()}"
    return boot_


def test_writes_are_gone_after_a_reboot(guest: Guest, image: Path) -> None:
    before = sha256(image)
    b = booted(boot(guest, image, "overlayd.root=tmpfs", "overlayd.test=discard"))
    assert b.probe("ROOT-FSTYPE=") == "overlay"
    assert b.probe("ROOT-WRITABLE=") == "yes"
    assert "overlayd-root: the root is an overlay: /dev/vda read-only" in b.log
    # the daemon adopted it: listed, with its usage, and the Manager says so
    assert '"root" "/org/overlayd/Overlayd1/overlay/root"' in b.probe("LIST")
    assert b.probe("ROOTOVERLAY") == 'o "/org/overlayd/Overlayd1/overlay/root"'
    usage = b.probe("USAGE")
    assert usage.startswith('s "active" s "/" t '), usage
    assert int(usage.split(" t ")[1].split()[0]) > 0
    assert "protected root file system" in b.probe("STATUS")
    assert b.probe("DAEMON-AT-BOOT") == "active", "the generator did not start overlayd"
    assert "This system runs on a protected root file system" in b.probe("MOTD")
    assert "thrown away at the next reboot" in b.probe("MOTD")
    assert "The root file system is protected: it is on an overlay of '/dev/vda'" in \
        b.probe("JOURNAL")
    assert b.probe("FAILED-UNITS") == ""
    assert "at_shutdown" in b.probe("PLAIN-COMMIT")
    assert '"/etc/overlayd-probe" "added"' in b.probe("DIFF")
    assert '"/etc/issue" "deleted"' in b.probe("DIFF")
    # overlayctl commit root asks for the commit at shutdown and says so; discard cancels
    assert "will be written to /dev/vda when the system shuts down" in b.probe("CTL-COMMIT")
    assert "thrown away at the next reboot" in b.probe("CTL-DISCARD")
    assert b.probe("AT-SHUTDOWN") == "b false"
    assert sha256(image) == before, "a discarded boot changed the image"


def test_commit_at_shutdown_writes_the_image(guest: Guest, image: Path) -> None:
    b = booted(boot(guest, image, "overlayd.root=tmpfs", "overlayd.test=commit"))
    assert b.probe("ROOT-FSTYPE=") == "overlay"
    assert b.probe("COMMIT").strip() == "", b.probe("COMMIT")
    assert b.probe("AT-SHUTDOWN") == "b true"
    assert "overlayd-root: commit done" in b.log, b.tail()
    assert "mode commit" in (image_cat(image, "/etc/overlayd-probe") or "")
    assert image_cat(image, "/var/lib/overlayd-probe/sub/file") == "deep\n"
    assert image_cat(image, "/etc/hostname") == "probe-host\n"
    assert image_cat(image, "/etc/issue") is None
    # overlayctl root disable on a protected root: written into the real root at shutdown
    assert "written into the real root file system at shutdown" in b.probe("CTL-ROOT")
    assert 'mode = "off"' in (image_cat(image, "/etc/overlayd/root.overlay") or "")
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], text=True, capture_output=True,
                          check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_off_boots_once_without_the_overlay(guest: Guest, image: Path) -> None:
    b = booted(boot(guest, image, "overlayd.root=off", "overlayd.test=off"))
    assert b.probe("ROOT-FSTYPE=") == "ext4"
    assert b.probe("ROOT-WRITABLE=") == "yes"
    assert b.probe("ROOTOVERLAY") == 'o "/"'
    assert b.probe("DAEMON-AT-BOOT") == "inactive"
    assert b.probe("MOTD") == ""
    assert b.probe("FAILED-UNITS") == ""
    assert image_cat(image, "/probe-writable") is not None
    assert "set in /etc/overlayd/root.overlay" in b.probe("CTL-ROOT")
    assert "overlayd.root=off, which wins" in b.probe("CTL-ROOT")
    setting = image_cat(image, "/etc/overlayd/root.overlay") or ""
    assert 'mode = "tmpfs"\nsize = "40%"' in setting
