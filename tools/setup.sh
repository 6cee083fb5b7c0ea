#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, run as root:
# the Debian packages overlayd and its tests need, then a venv at .venv/.
set -euo pipefail
cd "$(dirname "$0")/.."

# libsystemd-dev + pkg-config + gcc + python3-dev: systemd-python builds from source.
# e2fsprogs, squashfs-tools, erofs-utils, xfsprogs, btrfs-progs: images for tests and the demo.
# dbus-daemon: overlayd --standalone runs its own; polkitd: authorization (polkit issue).
# systemd (busctl), libglib2.0-bin (gdbus): the bus tests and the demo call the daemon with them.
# scdoc: the man pages (make install).
# systemd-container (systemd-nspawn): the system tests boot a throw-away container; without
# recommends, since libnss-mymachines would edit nsswitch.conf.
# kmod (modprobe): upper = zram needs the zram module where it is not built in.
# dosfstools (mkfs.vfat), fdisk (sfdisk): the partitioned-image tests build a Raspberry Pi-style
# image (a FAT boot partition and an ext4 root) with a real partitioning tool.
# fuse-overlayfs + fuse3: engine = "fuse" (and its tests and bench rows).
# python3-gi, gir1.2-gtk-4.0, gir1.2-adw-1: the desktop app (overlayd/desktop, Debian's python3);
# its tests: xvfb + xauth (xvfb-run), at-spi2-core + gir1.2-atspi-2.0 (AT-SPI driving),
# imagemagick (screenshots), desktop-file-utils + appstream (validating packaging/desktop).
PKGS=(python3-venv python3-dev libsystemd-dev pkg-config gcc make
      e2fsprogs squashfs-tools erofs-utils xfsprogs btrfs-progs util-linux
      dbus-daemon polkitd systemd libglib2.0-bin systemd-container scdoc
      python3-gi gir1.2-gtk-4.0 gir1.2-adw-1 gir1.2-atspi-2.0 at-spi2-core xvfb xauth
      imagemagick desktop-file-utils appstream kmod dosfstools fdisk
      fuse-overlayfs fuse3)
# --deb (make test, make deb): what building and checking the Debian package needs: debhelper,
# lintian, python3-pip (the bundled pydantic), and the Debian packages the .deb depends on,
# which the system tests' container (an overlay of this /) installs it beside; man-db renders
# the man pages in tests; zsh checks its completion script.
if [[ " $* " == *" --deb "* ]]; then
    PKGS+=(debhelper lintian dpkg-dev python3-pip python3-dbus-next python3-jeepney python3-systemd python3-rich
           man-db zsh)
fi
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# zram: hot_add/hot_remove need /sys/class/zram-control; load the module with no devices of
# its own (num_devices=0) if it is a module and not loaded. Built in: nothing to do.
if [ ! -e /sys/class/zram-control ]; then
    modprobe zram num_devices=0 2>/dev/null || echo "setup: no zram here (upper = zram tests skip)"
fi

PY=${PYTHON:-python3}
stamp=.venv/.overlayd-installed
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing overlayd and its dependencies into .venv"
    if ! { .venv/bin/pip install -q --upgrade pip &&
           .venv/bin/pip install -q -e '.[dev]'; } > .venv/pip.log 2>&1; then
        cat .venv/pip.log; echo "setup: pip install failed" >&2; exit 1
    fi
    touch "$stamp"
fi

# --vm (make test, .ci/run): what the root-on-overlay VM tests need: qemu, mmdebstrap, and the
# Debian 12 guest tree, cached per machine under /var/cache/overlayd-tests/ (tools/vm-root.sh).
if [[ " $* " == *" --vm "* ]]; then
    bash tools/vm-root.sh > /dev/null
fi
