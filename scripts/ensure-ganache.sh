#!/bin/sh
# Make sure the npm tools the chain tests use are installed, at pinned versions, in
# .tools/node_modules (gitignored): Node.js and npm as Debian packages (only when missing,
# and only as root), then in ONE npm install (a later --no-save install would prune the
# others):
#   ganache                  the local Ethereum node of the chain-anchor and payout tests
#   solc                     the Solidity compiler (solcjs) for contracts/
#   @openzeppelin/contracts  the ERC-20 and Merkle proof parts contracts/ is built from
#   @openzeppelin/merkle-tree  the reference the Python distribution tree is tested against
# Usage: scripts/ensure-ganache.sh            (run from anywhere; installs next to the repo)
set -eu
PACKAGES="ganache@7.9.2 solc@0.8.28 @openzeppelin/contracts@5.1.0 @openzeppelin/merkle-tree@1.0.8"
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"

installed_version() {
    node -e 'process.stdout.write(require(process.argv[1]).version)' \
        "$tools/node_modules/$1/package.json" 2>/dev/null || true
}

all_installed() {
    command -v node >/dev/null 2>&1 || return 1
    for spec in $PACKAGES; do
        name=${spec%@*}
        version=${spec##*@}
        [ "$(installed_version "$name")" = "$version" ] || return 1
    done
    [ -x "$tools/node_modules/.bin/ganache" ] && [ -x "$tools/node_modules/.bin/solcjs" ]
}

if all_installed; then
    exit 0
fi

missing=""
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: the chain tools need$missing; install with: sudo apt-get install$missing" >&2
        exit 1
    fi
    echo "installing Debian packages:$missing"
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086 # missing is a list of package names
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

echo "installing $PACKAGES into $tools"
mkdir -p "$tools"
# shellcheck disable=SC2086 # PACKAGES is a list of words
if ! npm install --prefix "$tools" --no-audit --no-fund --loglevel=error \
        --no-save $PACKAGES >"$tools/npm-install.log" 2>&1; then
    echo "error: npm install $PACKAGES failed (see $tools/npm-install.log)" >&2
    exit 1
fi
if ! all_installed; then
    echo "error: $PACKAGES installed but not all are found in $tools/node_modules" >&2
    exit 1
fi
