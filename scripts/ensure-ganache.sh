#!/bin/sh
# Make sure the local Ethereum node the chain-anchor tests run against is installed:
# Node.js and npm as Debian packages (only when missing, and only as root), then the
# `ganache` npm package at a pinned version in .tools/node_modules (gitignored).
# Usage: scripts/ensure-ganache.sh            (run from anywhere; installs next to the repo)
set -eu
GANACHE_VERSION=7.9.2
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
bin="$tools/node_modules/.bin/ganache"

installed_version() {
    node -e 'process.stdout.write(require(process.argv[1]).version)' \
        "$tools/node_modules/ganache/package.json" 2>/dev/null || true
}

if command -v node >/dev/null 2>&1 && [ -x "$bin" ] \
        && [ "$(installed_version)" = "$GANACHE_VERSION" ]; then
    exit 0
fi

missing=""
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: ganache needs$missing; install with: sudo apt-get install$missing" >&2
        exit 1
    fi
    echo "installing Debian packages:$missing"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

echo "installing ganache@$GANACHE_VERSION into $tools"
mkdir -p "$tools"
if ! npm install --prefix "$tools" --no-audit --no-fund --loglevel=error \
        --no-save "ganache@$GANACHE_VERSION" >"$tools/npm-install.log" 2>&1; then
    echo "error: npm install ganache@$GANACHE_VERSION failed (see $tools/npm-install.log)" >&2
    exit 1
fi
if [ ! -x "$bin" ]; then
    echo "error: ganache@$GANACHE_VERSION installed but $bin is missing" >&2
    exit 1
fi
