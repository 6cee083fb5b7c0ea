#!/bin/sh
# dracut shutdown hook of overlayd, sourced by dracut's /shutdown after it moved the old
# system's /run to /oldsys/run and unmounted /oldroot. A hook that fails is run again, so it
# runs once and always succeeds.
. /usr/share/overlayd/root/lib.sh
if [ -d "/oldsys$OVERLAYD_ROOT_STATE" ] && [ ! -e /tmp/overlayd-root-done ]; then
	: >/tmp/overlayd-root-done
	if grep -q ' /oldroot ' /proc/mounts; then
		overlayd_root_say "COMMIT FAILED: the old root is still mounted"
	else
		overlayd_root_shutdown "/oldsys$OVERLAYD_ROOT_STATE" "/oldsys$OVERLAYD_ROOT_LAYERS" || :
	fi
fi
:
