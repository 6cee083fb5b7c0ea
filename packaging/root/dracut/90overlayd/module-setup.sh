#!/bin/bash
# dracut module overlayd: the root on an overlay with the writes in RAM (pre-pivot hook), and
# their commit at shutdown from dracut's own exitrd (shutdown hook), with overlayd-merge: the
# daemon's merge code, python3 and the few modules it loads, listed by itself.
# Included whenever overlayd is installed; it does nothing unless the kernel command line or
# /etc/overlayd/root.overlay asks for it (see /usr/share/overlayd/root/lib.sh).

check() {
	[ -r /usr/share/overlayd/root/lib.sh ] && [ -x /usr/libexec/overlayd/overlayd-merge ] || return 1
	require_binaries python3 blockdev || return 1
	return 0
}

depends() {
	echo shutdown
}

installkernel() {
	hostonly='' instmods overlay
}

install() {
	local f
	inst_simple /usr/share/overlayd/root/lib.sh
	inst_hook pre-pivot 50 "$moddir/overlayd-pre-pivot.sh"
	inst_hook shutdown 50 "$moddir/overlayd-shutdown.sh"
	inst_multiple python3 blockdev awk cat cp mv mkdir sync
	inst_simple /usr/libexec/overlayd/overlayd-merge
	for f in $(/usr/libexec/overlayd/overlayd-merge --list-files); do
		inst "$f"
	done
}
