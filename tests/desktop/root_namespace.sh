#!/bin/sh
# root_namespace.sh NEWROOT "DIR..." COMMAND...: run COMMAND in this mount namespace (which must be a
# private one: `unshare -m --propagation private`) with "/" on an overlay laid out exactly as
# overlayd's initramfs lays out the root (packaging/root/lib.sh): the host's root bound
# read-only at /run/overlayd-root/lower, a tmpfs with source overlayd-root at
# /run/initramfs/overlayd-root holding the upper, the overlay (source overlayd-root) mounted
# with those paths and made the root by pivot_root, the state files beside the lower. Then
# /proc, /dev, /sys and the DIRs (space-separated: the tests' files, the checkout, the venv)
# come back from the host.
# The host sees none of it: every mount is in the namespace and goes with it.
set -eu
N=$1 DIRS=$2
shift 2
S=/run/overlayd-root L=/run/initramfs/overlayd-root
mount -n -t tmpfs -o mode=0755 run /run
mkdir -p "$S/lower" "$L"
mount -n --bind / "$S/lower"
mount -n -o remount,bind,ro "$S/lower"
mount -n -t tmpfs -o mode=0755,size=64m overlayd-root "$L"
mkdir "$L/upper" "$L/work"
mkdir -p "$N"
mount -n -t overlay -o "lowerdir=$S/lower,upperdir=$L/upper,workdir=$L/work,redirect_dir=off,index=off,metacopy=off,xino=off" overlayd-root "$N"
echo tmpfs >"$S/mode"
echo 64M >"$S/size"
echo "the desktop tests" >"$S/source"
# the initramfs mounts /run and moves it into the new root: the overlay's upperdir then reads
# /run/initramfs/overlayd-root/upper in the mount table, as the daemon expects
mount -n --move /run "$N/run"
cd "$N"
mkdir -p .oldroot
pivot_root . .oldroot
mount -n -t proc proc /proc
for d in /dev /sys $DIRS; do
	mkdir -p "$d"
	mount -n --rbind "/.oldroot$d" "$d"
done
umount -n -l /.oldroot
rmdir /.oldroot
exec "$@"
