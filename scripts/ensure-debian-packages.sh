#!/bin/sh
# Make sure binaries exist; install their Debian packages when missing and running as root.
# Usage: ensure-debian-packages.sh BINARY:PACKAGE [BINARY:PACKAGE ...]
set -eu
missing=""
for pair in "$@"; do
    bin=${pair%%:*}; pkg=${pair#*:}
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing$missing; install with: sudo apt-get install$missing" >&2
    exit 1
fi
echo "installing Debian packages:$missing"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
