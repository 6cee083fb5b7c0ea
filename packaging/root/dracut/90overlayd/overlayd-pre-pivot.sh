#!/bin/sh
# dracut pre-pivot hook of overlayd (sourced; it must not exit): $NEWROOT is the real root.
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh
. /usr/share/overlayd/root/lib.sh
overlayd_root_config "$NEWROOT"
if [ -n "$OVERLAYD_MODE" ] && overlayd_root_setup "$NEWROOT"; then
	# dracut-shutdown.service then unpacks this initramfs to /run/initramfs at shutdown
	need_shutdown
fi
