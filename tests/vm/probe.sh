#!/bin/sh
mode=none
for a in $(cat /proc/cmdline); do case "$a" in overlayd.test=*) mode=${a#overlayd.test=} ;; esac; done
say() { echo "PROBE $*"; }
call() { # one line of output per call, prefixed
    out=$("$@" 2>&1); say "$(echo "$1" | tr a-z A-Z)-RC=$? $(echo "$out" | tr '\n' ' ')"
}
say "UP uptime=$(cut -d' ' -f1 /proc/uptime) state=$(systemctl is-system-running 2>/dev/null)"
# before any bus call: on a protected root the generator has the daemon started at boot
say "DAEMON-AT-BOOT $(systemctl is-active overlayd.service)"
say "MOTD $(/etc/update-motd.d/50-overlayd-root 2>&1 | tr '\n' ' ')"
say "ROOT-FSTYPE=$(awk '$2 == "/" { t = $3 } END { print t }' /proc/mounts)"
# a user's writes: a new file, a new tree, a changed file, a deleted file
echo "boot $(cat /proc/sys/kernel/random/boot_id) mode $mode" >/etc/overlayd-probe
mkdir -p /var/lib/overlayd-probe/sub && echo deep >/var/lib/overlayd-probe/sub/file
echo probe-host >/etc/hostname
rm -f /etc/issue
if touch /probe-writable 2>/dev/null; then say ROOT-WRITABLE=yes; else say ROOT-WRITABLE=no; fi
sync
say "LIST $(busctl --system call org.overlayd.Overlayd1 /org/overlayd/Overlayd1 org.overlayd.Overlayd1.Manager ListOverlays 2>&1)"
say "ROOTOVERLAY $(busctl --system get-property org.overlayd.Overlayd1 /org/overlayd/Overlayd1 org.overlayd.Overlayd1.Manager RootOverlay 2>&1)"
if [ "$mode" != off ]; then
    say "USAGE $(busctl --system get-property org.overlayd.Overlayd1 /org/overlayd/Overlayd1/overlay/root org.overlayd.Overlayd1.Overlay State MountPoint UpperUsed 2>&1 | tr '\n' ' ')"
    say "STATUS $(overlayctl status root 2>&1 | tr '\n' '|')"
    say "PLAIN-COMMIT $(busctl --system call org.overlayd.Overlayd1 /org/overlayd/Overlayd1 org.overlayd.Overlayd1.Manager Commit 'sa{sv}' root 0 2>&1)"
    say "DIFF $(busctl --system call org.overlayd.Overlayd1 /org/overlayd/Overlayd1/overlay/root org.overlayd.Overlayd1.Overlay Diff 2>&1 | tr '\n' ' ')"
fi
say "JOURNAL $(journalctl -b -o cat SYSLOG_IDENTIFIER=overlayd 2>&1 | grep -m1 'root file system is protected')"
say "FAILED-UNITS $(systemctl --failed --plain --no-legend 2>&1 | awk '{ print $1 }' | tr '\n' ' ')"
case "$mode" in
discard)
    # asked for and then cancelled: nothing may reach the image
    say "CTL-COMMIT $(overlayctl --no-ask-password commit root 2>&1 | tr '\n' ' ')"
    say "CTL-DISCARD $(overlayctl --no-ask-password discard root 2>&1 | tr '\n' ' ')"
    say "AT-SHUTDOWN $(busctl --system get-property org.overlayd.Overlayd1 /org/overlayd/Overlayd1/overlay/root org.overlayd.Overlayd1.Overlay CommitAtShutdown 2>&1)"
    action=reboot ;;
commit)
    say "CTL-ROOT $(overlayctl --no-ask-password root disable 2>&1 | tr '\n' ' ')"
    say "COMMIT $(busctl --system call org.overlayd.Overlayd1 /org/overlayd/Overlayd1 org.overlayd.Overlayd1.Manager Commit 'sa{sv}' root 1 at_shutdown b true 2>&1)"
    say "AT-SHUTDOWN $(busctl --system get-property org.overlayd.Overlayd1 /org/overlayd/Overlayd1/overlay/root org.overlayd.Overlayd1.Overlay CommitAtShutdown 2>&1)"
    action=poweroff ;;
off)
    say "CTL-ROOT $(overlayctl --no-ask-password root enable --size 40% 2>&1 | tr '\n' ' ')"
    action=poweroff ;;
*) action=reboot ;;
esac
say "LEAVING $action"
systemctl "$action" --no-block
