#!/usr/bin/env bash
# The Debian package, in two named steps:
#   tools/deb.sh fetch        the only step that needs the network: the wheels of pydantic and
#                             what it needs (Debian 12's python3-pydantic is v1) for Debian's
#                             python3, into debian/wheels/ (not in git)
#   tools/deb.sh build OUT    offline: dpkg-buildpackage -us -uc -b in a copy of the tree
#                             under OUT (dpkg-buildpackage writes its results to the parent
#                             directory), then lintian; overlayd_*.deb, overlayd-gtk_*.deb and
#                             lintian.txt in OUT
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS=debian/wheels

fetch() {
    local req
    req=$(sed -n 's/^ *"\(pydantic[^"]*\)",$/\1/p' pyproject.toml)
    mkdir -p "$WHEELS"
    # binary wheels only (pydantic-core is compiled), for the python3 the package runs on
    if ! /usr/bin/python3 -m pip download --quiet --disable-pip-version-check \
            --only-binary=:all: -d "$WHEELS" "$req" > "$WHEELS/.fetch.log" 2>&1; then
        cat "$WHEELS/.fetch.log"; echo "deb: fetching $req failed" >&2; exit 1
    fi
    echo "deb: $(ls "$WHEELS"/*.whl | wc -l) wheels for $req in $WHEELS"
}

build() {
    local out=${1:?usage: tools/deb.sh build OUTDIR}
    ls "$WHEELS"/pydantic-*.whl > /dev/null 2>&1 || {
        echo "deb: no wheels in $WHEELS: run tools/deb.sh fetch (make deb-fetch) first" >&2
        exit 1; }
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    rm -rf "$out/src" "$out"/overlayd_* "$out"/overlayd-*
    mkdir "$out/src"
    # what git tracks (committed or not, as the tree has it) and the fetched wheels
    git ls-files -z --cached --others --exclude-standard | grep -zv '^debian/wheels/' |
        xargs -0 cp --parents -t "$out/src" 2>/dev/null || true
    git ls-files -z --deleted | xargs -0 -r -I{} rm -f "$out/src/{}"
    cp -r "$WHEELS" "$out/src/debian/wheels"
    (cd "$out/src" && dpkg-buildpackage -us -uc -b > "$out/build.log" 2>&1) || {
        tail -40 "$out/build.log"; echo "deb: dpkg-buildpackage failed ($out/build.log)" >&2
        exit 1; }
    rm -rf "$out/src"
    # lintian's findings are reported, not fatal: debian/README.source lists what remains
    lintian --info --display-info --pedantic "$out"/overlayd_*.changes > "$out/lintian.txt" 2>&1 \
        || true
    echo "deb: $(echo "$out"/overlayd_*.deb "$out"/overlayd-gtk_*.deb); lintian: $out/lintian.txt"
}

case "${1:-}" in
    fetch) fetch ;;
    build) shift; build "$@" ;;
    *) echo "usage: tools/deb.sh fetch | build OUTDIR" >&2; exit 2 ;;
esac
