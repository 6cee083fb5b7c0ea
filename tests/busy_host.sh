#!/usr/bin/env bash
# Run a command on a busy host, then remove everything the busy host was made of.
#
#   tests/busy_host.sh [--overlays N] [--loops N] [--mounted N] [--here] [--] COMMAND [ARG]...
#   e.g. tests/busy_host.sh .venv/bin/python -m pytest -q -p no:cacheprovider tests
#
# "Busy" is what broke the suite in review: about 1,000 mounts that are not the suite's and
# a few hundred loop devices. Made here, all in a fresh directory DIR (mktemp):
# * N overlays (--overlays, 500): each a tmpfs (DIR/run/bNNN/rw) and an overlay on it
#   (DIR/mnt/bNNN). The first half have source overlayd-busyNNN, as another overlayd's would
#   (runtime directory DIR/run); the rest busyNNN, as any other tool's.
# * a sparse ext4 file DIR/sparse.img attached to N loop devices (--loops, 300), read-only;
#   the first N of them (--mounted, 100) mounted: as the image (DIR/run/bNNN/lower, the lower
#   layer of overlayd-like overlay bNNN) while there are such overlays, then at
#   DIR/loopmnt/NNN (a foreign /dev/loop mount).
#
# By default the mounts are made in a private mount namespace (unshare, slave propagation:
# the host's later mounts still show up in it) that COMMAND runs in, so other users of the
# machine do not see them. --here makes them in the current namespace instead, visible to
# the whole machine, as on the reviewer's host. Loop devices are global either way.
#
# Afterwards (also on failure or Ctrl-C) it unmounts exactly the mounts it made, newest
# first, and detaches exactly the loop devices it attached, each only while its backing file
# is still DIR/sparse.img; then it removes DIR. Loop devices added by the kernel for it stay
# (free), as after any losetup. A kill -9 of this script leaves the loop devices attached
# (losetup -j DIR/sparse.img lists them); the private namespace's mounts die with it.
# Exit status: COMMAND's.
set -euo pipefail

overlays=500 loops=300 mounted=100 here=no
while [ $# -gt 0 ]; do
    case $1 in
        --overlays) overlays=$2; shift 2 ;;
        --loops) loops=$2; shift 2 ;;
        --mounted) mounted=$2; shift 2 ;;
        --here) here=yes; shift ;;
        --) shift; break ;;
        -*) echo "busy_host: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { sed -n '2,5p' "$0" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "busy_host: must run as root" >&2; exit 2; }
[ "$mounted" -le "$loops" ] || { echo "busy_host: --mounted > --loops" >&2; exit 2; }

if [ "$here" = no ] && [ -z "${BUSY_HOST_NS:-}" ]; then
    exec env BUSY_HOST_NS=1 unshare --mount --propagation slave -- "$0" \
        --overlays "$overlays" --loops "$loops" --mounted "$mounted" -- "$@"
fi

DIR=$(mktemp -d /tmp/busy-host.XXXXXX)
IMG=$DIR/sparse.img
made_mounts=()  # targets, in the order mounted
made_loops=()   # devices, in the order attached

cleanup() {
    local rc=$? i dev
    trap - EXIT INT TERM
    echo "busy_host: removing ${#made_mounts[@]} mounts and ${#made_loops[@]} loop devices" >&2
    for ((i = ${#made_mounts[@]} - 1; i >= 0; i--)); do
        umount "${made_mounts[i]}" 2>/dev/null || umount -l "${made_mounts[i]}" || true
    done
    for dev in "${made_loops[@]}"; do
        if [ "$(cat "/sys/block/${dev#/dev/}/loop/backing_file" 2>/dev/null)" = "$IMG" ]; then
            losetup --detach "$dev" || true
        fi
    done
    rm -rf "$DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mnt() {  # mnt TARGET MOUNT-ARGS...: mount, and remember the target for the cleanup
    local target=$1; shift
    mkdir -p "$target"
    mount "$@" "$target"
    made_mounts+=("$target")
}

echo "busy_host: $overlays overlays, $loops loop devices ($mounted mounted) in $DIR" >&2
truncate -s 64M "$IMG"
mkfs.ext4 -q -F "$IMG"
mkdir -p "$DIR/lowerdir"
echo busy > "$DIR/lowerdir/busy.txt"
for ((i = 0; i < loops; i++)); do
    dev=$(losetup --read-only --find --show "$IMG")
    made_loops+=("$dev")
done

half=$((overlays / 2))
for ((i = 0; i < overlays; i++)); do
    name=$(printf 'b%03d' "$i")
    if [ "$i" -lt "$half" ]; then source=overlayd-busy$i; else source=busy$i; fi
    base=$DIR/run/$name
    lower=$DIR/lowerdir
    if [ "$i" -lt "$half" ] && [ "$i" -lt "$mounted" ]; then  # an image, as overlayd has
        mnt "$base/lower" -o ro,noload "${made_loops[i]}"
        lower=$base/lower
    fi
    mnt "$base/rw" -t tmpfs -o size=1m "$source"
    mkdir "$base/rw/upper" "$base/rw/work"
    mnt "$DIR/mnt/$name" -t overlay -o "lowerdir=$lower,upperdir=$base/rw/upper,workdir=$base/rw/work" "$source"
done
for ((i = half < mounted ? half : mounted; i < mounted; i++)); do
    mnt "$(printf '%s/loopmnt/%03d' "$DIR" "$i")" -o ro,noload "${made_loops[i]}"
done
echo "busy_host: ready: $(wc -l < /proc/self/mountinfo) mounts, $(losetup --list --noheadings | wc -l) loop devices attached on the machine; running $*" >&2

set +e
"$@"
rc=$?
set -e
exit "$rc"
