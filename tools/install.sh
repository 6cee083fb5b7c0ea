#!/usr/bin/env bash
# make install: every file in its FHS place under $DESTDIR$PREFIX (PREFIX=/usr by default).
# The Python package and its dependencies go into a private directory,
# PREFIX/lib/overlayd/site (Debian 12's python3-pydantic is v1, too old); the commands are
# small wrappers that put it first on sys.path of the system's python3.
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr}
SYSCONFDIR=${SYSCONFDIR:-/etc}
PYTHON=${PYTHON:-/usr/bin/python3}
PIP=${PIP:-.venv/bin/pip}
# WHEELS=DIR (the Debian package): offline, only pydantic and what it needs from the wheels in
# DIR (tools/deb.sh fetch), and the overlayd package copied as it is; dbus-next, jeepney, systemd
# and rich then come from Debian's python3-dbus-next, -jeepney, -systemd, -rich.
WHEELS=${WHEELS:-}

# dbus-daemon, polkitd and journalctl --update-catalog read only these places, whatever
# PREFIX is (systemd itself also reads /usr/local/lib/systemd/...).
DBUSDIR=${DBUSDIR:-/usr/share/dbus-1}
POLKITDIR=${POLKITDIR:-/usr/share/polkit-1}
CATALOGDIR=${CATALOGDIR:-/usr/lib/systemd/catalog}
# ...and so do initramfs-tools and dracut, for the root on an overlay.
INITRAMFSDIR=${INITRAMFSDIR:-/usr/share/initramfs-tools}
DRACUTDIR=${DRACUTDIR:-/usr/lib/dracut/modules.d}

D=$DESTDIR
SITE=$PREFIX/lib/overlayd/site
LIBEXEC=$PREFIX/libexec/overlayd
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}  # the .deb: /lib/systemd/system (Debian 12)
GENDIR=$PREFIX/lib/systemd/system-generators

say() { echo "install: $*"; }
python_dep() {  # python_dep NAME: its requirement as pyproject.toml states it
    sed -n "s/^ *\"\($1[^\"]*\)\",\$/\1/p" pyproject.toml
}
put() {  # put MODE SRC DEST: copy, rewriting /usr/bin and /usr/libexec for another PREFIX
    install -D -m "$1" "$2" "$D$3"
    if [ "$PREFIX" != /usr ]; then
        sed -i "s|/usr/bin/overlay|$PREFIX/bin/overlay|g; s|/usr/libexec/overlayd/|$LIBEXEC/|g;
                s|/usr/share/overlayd/|$PREFIX/share/overlayd/|g" "$D$3"
    fi
}
wrapper() {  # wrapper DEST MODULE FUNCTION [PYTHON-FLAGS]
    install -d "$D$(dirname "$1")"
    cat > "$D$1" <<PY
#!$PYTHON ${4:--I}
# overlayd's $(basename "$1"), installed by make install.
import sys
sys.path.insert(0, "$SITE")
from $2 import $3
sys.exit($3())
PY
    chmod 0755 "$D$1"
}

say "Python package and dependencies -> $D$SITE"
rm -rf "$D$SITE"
install -d "$D$SITE"
if [ -n "$WHEELS" ]; then
    "$PYTHON" -m pip install --quiet --no-compile --disable-pip-version-check --no-index \
        --find-links "$WHEELS" --target "$D$SITE" "$(python_dep pydantic)"
    cp -r overlayd "$D$SITE/overlayd"
    find "$D$SITE" -name __pycache__ -prune -exec rm -rf {} +
    rm -rf "$D$SITE/bin"
else
    had_build=$([ -e build ] && echo yes || echo no)
    pip_log=$(mktemp "${TMPDIR:-/tmp}/overlayd-install-pip.XXXXXX")  # shown if pip fails
    if ! "$PIP" install --quiet --no-compile --disable-pip-version-check --target "$D$SITE" . \
            > "$pip_log" 2>&1; then
        cat "$pip_log"; rm -f "$pip_log"; echo "install: pip failed" >&2; exit 1
    fi
    rm -f "$pip_log"
    rm -rf "$D$SITE/bin" overlayd.egg-info
    [ "$had_build" = yes ] || rm -rf build/lib build/bdist.*  # setuptools' scratch, if ours
fi

say "commands -> $D$PREFIX/bin, $D$LIBEXEC, $D$GENDIR"
wrapper "$PREFIX/bin/overlayd" overlayd.daemon main
wrapper "$PREFIX/bin/overlayctl" overlayd.ctl main
wrapper "$LIBEXEC/overlayd-prepare" overlayd.boot prepare_main
wrapper "$GENDIR/overlayd-generator" overlayd.boot generator_main
# -S as well: the exitrd that runs it carries only the modules it loads (no site)
wrapper "$LIBEXEC/overlayd-merge" overlayd.offline main -IS

say "the root on an overlay -> $D$INITRAMFSDIR, $D$DRACUTDIR, $D$PREFIX/share/overlayd/root"
put 0644 packaging/root/lib.sh "$PREFIX/share/overlayd/root/lib.sh"
put 0755 packaging/root/shutdown "$PREFIX/share/overlayd/root/shutdown"
put 0755 packaging/root/initramfs-tools/hooks/overlayd "$INITRAMFSDIR/hooks/overlayd"
put 0755 packaging/root/initramfs-tools/scripts/local-bottom/overlayd \
    "$INITRAMFSDIR/scripts/local-bottom/overlayd"
for f in packaging/root/dracut/90overlayd/*; do
    put 0755 "$f" "$DRACUTDIR/90overlayd/$(basename "$f")"
done
# the login message on a protected root (pam_motd runs /etc/update-motd.d/*)
put 0755 packaging/root/update-motd.d/50-overlayd-root "$SYSCONFDIR/update-motd.d/50-overlayd-root"

say "man pages -> $D$PREFIX/share/man"
for m in man/*.[0-9]; do  # generated from the parsers (python -m tools.manpages)
    put 0644 "$m" "$PREFIX/share/man/man${m##*.}/$(basename "$m")"
done
for s in man/*.scd; do  # written in scdoc
    page=$(basename "$s" .scd)
    install -d "$D$PREFIX/share/man/man${page##*.}"
    scdoc < "$s" > "$D$PREFIX/share/man/man${page##*.}/$page"
done

say "shell completion -> $D$PREFIX/share/bash-completion, $D$PREFIX/share/zsh"
put 0644 packaging/completion/overlayctl.bash "$PREFIX/share/bash-completion/completions/overlayctl"
put 0644 packaging/completion/overlayctl.zsh "$PREFIX/share/zsh/vendor-completions/_overlayctl"

say "units, bus, polkit, tmpfiles, catalog, schema, docs"
for u in overlayd.service overlayd@.service overlayd-prepare@.service; do
    put 0644 "units/$u" "$UNITDIR/$u"
done
put 0644 dbus/org.overlayd.Overlayd1.conf "$DBUSDIR/system.d/org.overlayd.Overlayd1.conf"
put 0644 dbus/org.overlayd.Overlayd1.service \
    "$DBUSDIR/system-services/org.overlayd.Overlayd1.service"
for x in dbus/org.overlayd.Overlayd1.*.xml; do
    put 0644 "$x" "$DBUSDIR/interfaces/$(basename "$x")"
done
put 0644 polkit/org.overlayd.overlayd1.policy \
    "$POLKITDIR/actions/org.overlayd.overlayd1.policy"
put 0644 packaging/tmpfiles.d/overlayd.conf "$PREFIX/lib/tmpfiles.d/overlayd.conf"
put 0644 packaging/catalog/overlayd.catalog "$CATALOGDIR/overlayd.catalog"
put 0644 packaging/overlay.schema.json "$PREFIX/share/overlayd/overlay.schema.json"
for f in packaging/example.overlay polkit/*.rules.example README.md; do
    put 0644 "$f" "$PREFIX/share/doc/overlayd/$(basename "$f")"
done
install -d -m 0755 "$D$SYSCONFDIR/overlayd"
# every setting with its default, commented out (a conffile of the .deb); an admin's is kept
[ -e "$D$SYSCONFDIR/overlayd/overlayd.conf" ] ||
    install -m 0644 packaging/overlayd.conf "$D$SYSCONFDIR/overlayd/overlayd.conf"
say "done. On a live system: systemctl daemon-reload; systemd-tmpfiles --create overlayd.conf;"
say "journalctl --update-catalog; then systemctl start overlayd (or any bus call starts it)."
