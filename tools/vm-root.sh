#!/usr/bin/env bash
# The VM tests' Debian 12 guest: qemu and mmdebstrap on the host, and a pristine root tree
# (kernel, initramfs-tools, systemd, dbus, python3) kept as a tar in $OVERLAYD_VM_CACHE
# (default /var/cache/overlayd-tests/), made once per machine and reused by every checkout.
# Idempotent: packages are installed only when missing, the tree is built only when its tar
# is missing. Called by tools/setup.sh --vm (make test, .ci/run). Prints the tar's path last.
set -euo pipefail
CACHE=${OVERLAYD_VM_CACHE:-/var/cache/overlayd-tests}
# What the guest needs: a kernel with an initramfs-tools initramfs (busybox, zstd), systemd as
# PID 1 with udev, a system bus (dbus), python3 for overlayd, e2fsprogs. The name of the tar
# changes with this list, so a new list builds a new tree.
GUEST_PKGS=systemd-sysv,udev,linux-image-amd64,initramfs-tools,busybox,zstd,e2fsprogs,dbus,python3
TAR=$CACHE/debian12-root-$(printf %s "$GUEST_PKGS" | sha256sum | cut -c1-12).tar

HOST_PKGS=(qemu-system-x86 mmdebstrap e2fsprogs cpio)
missing=()
for p in "${HOST_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "vm-root: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

install -d -m 0755 "$CACHE"
# One builder at a time per machine; the others wait and then find the tar.
exec 9>"$CACHE/.lock"
flock 9
if [ ! -s "$TAR" ]; then
    echo "vm-root: building the Debian 12 guest tree (once per machine, about 2 minutes)" >&2
    work=$(mktemp -d "$CACHE/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    src=
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [ -s "$f" ]; then src=$f; break; fi
    done
    if ! mmdebstrap --mode=root --variant=minbase --include="$GUEST_PKGS" \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            bookworm "$work/root" ${src:+"$src"} > "$work/mmdebstrap.log" 2>&1; then
        tail -30 "$work/mmdebstrap.log" >&2
        echo "vm-root: mmdebstrap failed" >&2
        exit 1
    fi
    tar -C "$work/root" -cf "$work/root.tar" .
    mv "$work/root.tar" "$TAR"
fi
echo "$TAR"
