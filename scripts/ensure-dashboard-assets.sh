#!/bin/sh
# Install the dashboard's chart library into the gateway package (gateway/static/vendor/,
# gitignored): the `uplot` npm package at a pinned version, its tarball checked against the
# pinned Subresource-Integrity hash before anything is extracted (docs/GATEWAY.md,
# "Dashboard"). Idempotent: does nothing when that version is already in place.
# Usage: scripts/ensure-dashboard-assets.sh        (run from anywhere)
set -eu
UPLOT_VERSION=1.6.32
UPLOT_INTEGRITY=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==
root=$(cd "$(dirname "$0")/.." && pwd)
vendor="$root/gateway/static/vendor"
stamp="$vendor/uplot.version"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$UPLOT_VERSION $UPLOT_INTEGRITY" ] \
        && [ -f "$vendor/uPlot.iife.min.js" ] && [ -f "$vendor/uPlot.min.css" ]; then
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: the dashboard's chart library needs npm; install with: sudo apt-get install npm" >&2
        exit 1
    fi
    echo "installing Debian packages: npm"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "installing uplot@$UPLOT_VERSION into $vendor"
if ! (cd "$work" && npm pack --silent "uplot@$UPLOT_VERSION" >"$work/pack.log" 2>&1); then
    echo "error: npm pack uplot@$UPLOT_VERSION failed: $(tail -n 1 "$work/pack.log")" >&2
    exit 1
fi
tarball="$work/uplot-$UPLOT_VERSION.tgz"
got="sha512-$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tarball")"
if [ "$got" != "$UPLOT_INTEGRITY" ]; then
    echo "error: uplot-$UPLOT_VERSION.tgz has integrity $got, not the pinned $UPLOT_INTEGRITY" >&2
    exit 1
fi
tar -xzf "$tarball" -C "$work" package/dist/uPlot.iife.min.js package/dist/uPlot.min.css \
    package/LICENSE
mkdir -p "$vendor"
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$vendor/"
cp "$work/package/LICENSE" "$vendor/uPlot.LICENSE"
echo "$UPLOT_VERSION $UPLOT_INTEGRITY" >"$stamp"
