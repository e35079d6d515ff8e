#!/bin/sh
# Make sure the Home Assistant the Home Assistant test runs against is installed: a pinned
# release in its own venv, .tools/ha-venv (gitignored), never in .venv (it pins its own
# versions of many packages, paho-mqtt 1.x among them). 2024.1.x is the last release that
# runs on Python 3.11 (later ones need 3.12). The MQTT integration's own requirements
# (paho-mqtt, and janus for file_upload) are installed here too, because the test runs Home
# Assistant with --skip-pip (no installs at run time).
# Usage: scripts/ensure-home-assistant.sh      (run from anywhere; installs next to the repo)
set -eu
HA_VERSION=2024.1.6
UV_VERSION=0.13.9
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.tools/ha-venv"
stamp="$venv/.installed-$HA_VERSION"
[ -f "$stamp" ] && exit 0

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
    echo "error: Home Assistant $HA_VERSION needs Python 3.11 or 3.12 ($python is $("$python" -V 2>&1))" >&2
    exit 1
fi
echo "installing Home Assistant $HA_VERSION into $venv (once; about a minute, ~350 MB)"
mkdir -p "$root/.tools"
# uv resolves and installs HA's ~200 packages in parallel: about 30 s against pip's 3 to 5
# minutes, measured here on a fresh cache. It lives in its own small venv.
uv="$root/.tools/uv/bin/uv"
if [ ! -x "$uv" ]; then
    "$python" -m venv "$root/.tools/uv"
    "$root/.tools/uv/bin/python" -m pip install -q "uv==$UV_VERSION" >"$root/.tools/ha-install.log" 2>&1 || {
        echo "error: pip install uv==$UV_VERSION failed (see $root/.tools/ha-install.log)" >&2; exit 1; }
fi
rm -rf "$venv"
if ! { "$uv" venv -q --python "$python" "$venv" &&
       VIRTUAL_ENV="$venv" "$uv" pip install -q "homeassistant==$HA_VERSION" "paho-mqtt==1.6.1" \
           "janus==1.0.0"; } >>"$root/.tools/ha-install.log" 2>&1; then
    echo "error: installing homeassistant==$HA_VERSION failed (see $root/.tools/ha-install.log)" >&2
    exit 1
fi
touch "$stamp"
