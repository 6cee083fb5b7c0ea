# overlayd: the root file system on an overlay (overlayd.root=tmpfs). POSIX sh, busybox-safe.
# Sourced by the initramfs-tools boot script, the dracut hooks and both exitrds, so that
# the layout and the steps are written down once. Installed as /usr/share/overlayd/root/lib.sh.
#
# Layout at run time (the daemon adopts it as the overlay "root"):
#   /run/overlayd-root/             small state files, written at boot:
#     lower/                        the real root, mounted read-only (block device set ro too)
#     lowerdev fstype mode size source
#     last-commit-failed            the report of a commit at the last shutdown that failed
#     commit                        present: apply the writes to the real root at shutdown
#     next-setting                  present: becomes /etc/overlayd/root.overlay at shutdown
#   /run/initramfs/overlayd-root/   the upper's tmpfs (source overlayd-root): upper/ work/
#   /                               overlay (source overlayd-root) of lower/ and upper/
# The upper MUST live below /run/initramfs: at shutdown systemd unmounts every other mount
# under /run (umount.target, then systemd-shutdown's loop), and overlayfs does not keep its
# layers' mount points busy, so an upper mounted elsewhere is gone by the time the exitrd
# runs. Mounts below /run/initramfs are left alone by both.
#
# Settings: the kernel command line (overlayd.root=tmpfs|off, overlayd.root.size=50%|512M),
# else /etc/overlayd/root.overlay in the root file system (mode = "tmpfs"|"off",
# size = "..."). The command line wins, so overlayd.root=off boots once without the overlay.

OVERLAYD_ROOT_STATE=/run/overlayd-root
OVERLAYD_ROOT_LAYERS=/run/initramfs/overlayd-root
OVERLAYD_ROOT_SETTING=etc/overlayd/root.overlay
OVERLAYD_ROOT_REPORT=var/lib/overlayd/root-commit.failed
OVERLAYD_ROOT_MERGE=/usr/libexec/overlayd/overlayd-merge
OVERLAYD_ROOT_OPTIONS=redirect_dir=off,index=off,metacopy=off,xino=off

overlayd_root_say() {
	echo "overlayd-root: $*" >&2
	# also to the kernel log, so that the journal of this boot has it
	if [ -w /dev/kmsg ]; then echo "<5>overlayd-root: $*" >/dev/kmsg 2>/dev/null || :; fi
}

# overlayd_root_value FILE KEY: the value of KEY = "value" (TOML, one line) in FILE
overlayd_root_value() {
	awk -v k="$2" '
		{ sub(/#.*/, ""); i = index($0, "="); if (i == 0) next
		  key = substr($0, 1, i - 1); gsub(/[ \t]/, "", key); if (key != k) next
		  v = substr($0, i + 1); gsub(/^[ \t]*"?|"?[ \t\r]*$/, "", v); val = v }
		END { print val }' "$1" 2>/dev/null
}

# overlayd_root_config ROOTMNT: sets OVERLAYD_MODE (tmpfs, or empty: no overlay),
# OVERLAYD_SIZE and OVERLAYD_FROM (where the setting came from)
overlayd_root_config() {
	OVERLAYD_MODE= OVERLAYD_SIZE= OVERLAYD_FROM=
	for arg in $(cat /proc/cmdline); do
		case "$arg" in
		overlayd.root=*) OVERLAYD_MODE=${arg#overlayd.root=} OVERLAYD_FROM="the kernel command line" ;;
		overlayd.root.size=*) OVERLAYD_SIZE=${arg#overlayd.root.size=} ;;
		esac
	done
	if [ -z "$OVERLAYD_FROM" ] && [ -f "$1/$OVERLAYD_ROOT_SETTING" ]; then
		OVERLAYD_MODE=$(overlayd_root_value "$1/$OVERLAYD_ROOT_SETTING" mode)
		[ -n "$OVERLAYD_SIZE" ] || OVERLAYD_SIZE=$(overlayd_root_value "$1/$OVERLAYD_ROOT_SETTING" size)
		OVERLAYD_FROM=/$OVERLAYD_ROOT_SETTING
	fi
	case "$OVERLAYD_MODE" in
	tmpfs) ;;
	off | "") OVERLAYD_MODE= ;;
	*)
		overlayd_root_say "unknown upper '$OVERLAYD_MODE' (from $OVERLAYD_FROM; known: tmpfs, off): booting without an overlay"
		OVERLAYD_MODE=
		;;
	esac
	case "$OVERLAYD_SIZE" in
	"") OVERLAYD_SIZE=50% ;;
	*[!0-9kKmMgG%]* | [!0-9]*)
		overlayd_root_say "size '$OVERLAYD_SIZE' is not a number of bytes with k, m, g or % after it: using 50%"
		OVERLAYD_SIZE=50%
		;;
	esac
}

# overlayd_root_mounted_at DIR: "DEVICE FSTYPE" of the mount at DIR
overlayd_root_mounted_at() {
	awk -v m="$1" '$2 == m { l = $1 " " $3 } END { print l }' /proc/mounts
}

# overlayd_root_move FROM TO: move a mount (bind + unmount where a shared parent refuses)
overlayd_root_move() {
	mount -n -o move "$1" "$2" 2>/dev/null && return 0
	mount -n -o bind "$1" "$2" && umount -n "$1"
}

# overlayd_root_setup ROOTMNT: put the root mounted at ROOTMNT on an overlay, per
# overlayd_root_config. On failure it puts the root back as it was and returns 1: the
# machine boots without the overlay, which the console and the kernel log say.
overlayd_root_setup() {
	root=$1 S=$OVERLAYD_ROOT_STATE L=$OVERLAYD_ROOT_LAYERS
	set -- $(overlayd_root_mounted_at "$root")
	dev=${1:-} fstype=${2:-}
	if [ ! -b "$dev" ]; then
		overlayd_root_say "the root ($dev) is not a block device: booting without an overlay"
		return 1
	fi
	if ! mount -n -o remount,ro "$root"; then
		overlayd_root_say "cannot make the root read-only: booting without an overlay"
		return 1
	fi
	mkdir -p "$S/lower" "$L"
	if ! overlayd_root_move "$root" "$S/lower"; then
		overlayd_root_say "cannot move the root to $S/lower: booting without an overlay"
		return 1
	fi
	blockdev --setro "$dev" || overlayd_root_say "cannot set $dev read-only (the mount is read-only)"
	if mount -n -t tmpfs -o "mode=0755,size=$OVERLAYD_SIZE" overlayd-root "$L" &&
		mkdir -p "$L/upper" "$L/work" && { modprobe overlay 2>/dev/null || :; } &&
		mount -n -t overlay -o "lowerdir=$S/lower,upperdir=$L/upper,workdir=$L/work,$OVERLAYD_ROOT_OPTIONS" \
			overlayd-root "$root"; then
		echo "$dev" >"$S/lowerdev"
		echo "$fstype" >"$S/fstype"
		echo "$OVERLAYD_MODE" >"$S/mode"
		echo "$OVERLAYD_SIZE" >"$S/size"
		echo "$OVERLAYD_FROM" >"$S/source"
		if [ -f "$S/lower/$OVERLAYD_ROOT_REPORT" ]; then cp "$S/lower/$OVERLAYD_ROOT_REPORT" "$S/last-commit-failed"; fi
		overlayd_root_say "the root is an overlay: $dev read-only, writes in RAM ($OVERLAYD_MODE, at most $OVERLAYD_SIZE); set by $OVERLAYD_FROM"
		return 0
	fi
	overlayd_root_say "cannot mount the upper or the overlay: booting without an overlay"
	umount -n "$L" 2>/dev/null
	blockdev --setrw "$dev" 2>/dev/null
	overlayd_root_move "$S/lower" "$root" || overlayd_root_say "cannot put the root back at $root"
	return 1
}

# overlayd_root_shutdown STATE LAYERS: in an exitrd, once the old root is unmounted. STATE is
# a copy of the old system's /run/overlayd-root, LAYERS its upper's tmpfs. Applies a requested
# commit (overlayd-merge: the daemon's own merge code) and a requested setting to the real root.
overlayd_root_shutdown() {
	S=$1 L=$2
	[ -e "$S/commit" ] || [ -e "$S/next-setting" ] || return 0
	dev=$(cat "$S/lowerdev") fstype=$(cat "$S/fstype")
	T=/overlayd-target
	mkdir -p "$T"
	blockdev --setrw "$dev" 2>/dev/null
	if ! mount -n -t "$fstype" -o rw "$dev" "$T"; then
		overlayd_root_say "COMMIT FAILED: cannot mount $dev read-write; the writes of this boot are lost"
		return 1
	fi
	rc=0
	if [ -e "$S/commit" ]; then
		overlayd_root_say "writing the changes of this boot to $dev"
		if "$OVERLAYD_ROOT_MERGE" "$L/upper" "$T"; then
			overlayd_root_say "commit done"
		else
			overlayd_root_say "COMMIT FAILED: see above; the root file system is consistent, the next boot says so in the journal"
			rc=1
		fi
	fi
	if [ -e "$S/next-setting" ]; then
		if mkdir -p "$T/${OVERLAYD_ROOT_SETTING%/*}" && cp "$S/next-setting" "$T/$OVERLAYD_ROOT_SETTING.tmp" &&
			mv "$T/$OVERLAYD_ROOT_SETTING.tmp" "$T/$OVERLAYD_ROOT_SETTING"; then
			overlayd_root_say "next boot: $(overlayd_root_value "$T/$OVERLAYD_ROOT_SETTING" mode)"
		else
			overlayd_root_say "cannot write /$OVERLAYD_ROOT_SETTING"
			rc=1
		fi
	fi
	sync
	umount -n "$T" || { overlayd_root_say "cannot unmount $dev"; rc=1; }
	sync
	return $rc
}
