#!/usr/bin/env bash
# Install (or uninstall) edgeproof as a systemd service on Raspberry Pi OS or Debian.
#
#   sudo systemd/install.sh [--role agent|gateway] [--with-mosquitto]
#   sudo systemd/install.sh --uninstall [--purge]
#   systemd/install.sh --dry-run ...        print what would be done, change nothing
#
# Installing creates the `edgeproof` system user (in the `gpio` group when it exists), a
# virtualenv in /opt/edgeproof/venv with edgeproof installed from this checkout (the `pi`
# extra on a Raspberry Pi for the agent, the `gateway` and `provision` extras for the
# gateway), the unit file, and enables it. The service is started only once its config
# (/etc/edgeproof/agent.toml or gateway.toml) exists. Running it again upgrades in place.
#
# Uninstalling stops and removes the units and /opt/edgeproof, and keeps /etc/edgeproof and
# /var/lib/edgeproof (keys, outbox, log) unless --purge is given.
set -euo pipefail

PREFIX=/opt/edgeproof
VENV=$PREFIX/venv
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/edgeproof
STATE_DIR=/var/lib/edgeproof
SERVICE_USER=edgeproof
SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

role=agent
action=install
purge=no
dry_run=no
with_mosquitto=no

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

say() {
    echo "install.sh: $*"
}

# Run a command, or only print it with --dry-run.
run() {
    if [[ $dry_run == yes ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --role)
                [[ $# -ge 2 ]] || die "--role needs agent or gateway"
                role=$2
                shift 2
                ;;
            --role=*) role=${1#--role=}; shift ;;
            --uninstall) action=uninstall; shift ;;
            --purge) purge=yes; shift ;;
            --dry-run) dry_run=yes; shift ;;
            --with-mosquitto) with_mosquitto=yes; shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
    done
    [[ $role == agent || $role == gateway ]] || die "--role must be agent or gateway"
    if [[ $purge == yes && $action != uninstall ]]; then
        die "--purge only goes with --uninstall"
    fi
}

check_system() {
    if [[ $dry_run == no && $(id -u) -ne 0 ]]; then
        die "run as root (sudo $0 ...)"
    fi
    [[ -r /etc/debian_version ]] || die "this installer supports Raspberry Pi OS and Debian only"
    command -v systemctl >/dev/null 2>&1 || die "systemd (systemctl) is required"
}

is_raspberry_pi() {
    grep -qs "Raspberry Pi" /proc/device-tree/model
}

# systemctl talks to a running systemd; in a chroot or image build only `enable` works.
systemd_running() {
    [[ -d /run/systemd/system ]]
}

install_packages() {
    local packages=()
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)
    if [[ $with_mosquitto == yes ]] && ! command -v mosquitto >/dev/null 2>&1 \
        && [[ ! -x /usr/sbin/mosquitto ]]; then
        packages+=(mosquitto)
    fi
    if [[ ${#packages[@]} -gt 0 ]]; then
        say "installing Debian packages: ${packages[*]}"
        run apt-get update -qq
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
    fi
}

create_user() {
    if id "$SERVICE_USER" >/dev/null 2>&1; then
        say "user $SERVICE_USER exists"
    else
        say "creating system user $SERVICE_USER"
        run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "edgeproof service" "$SERVICE_USER"
    fi
    if [[ $role == agent ]] && getent group gpio >/dev/null 2>&1; then
        run usermod --append --groups gpio "$SERVICE_USER"
    fi
}

create_dirs() {
    run install -d -m 0755 -o root -g root "$CONF_DIR"
    # The service user owns its state; systemd's StateDirectory= keeps it that way.
    if [[ $dry_run == yes ]] || id "$SERVICE_USER" >/dev/null 2>&1; then
        run install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
    fi
}

pip_target() {
    local extras
    if [[ $role == gateway ]]; then
        extras=gateway,provision
    elif is_raspberry_pi; then
        extras=pi
    else
        extras=""
    fi
    if [[ -n $extras ]]; then
        echo "${SOURCE}[${extras}]"
    else
        echo "$SOURCE"
    fi
}

install_venv() {
    run install -d -m 0755 "$PREFIX"
    if [[ ! -x $VENV/bin/python ]]; then
        say "creating $VENV"
        run python3 -m venv "$VENV"
    fi
    say "installing edgeproof from $SOURCE into $VENV"
    run "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "$(pip_target)"
    run install -d -m 0755 "$PREFIX/docs"
    run install -m 0644 "$SOURCE/docs/OPERATIONS.md" "$PREFIX/docs/OPERATIONS.md"
}

install_unit() {
    local unit=edgeproof-$role.service
    local config=$CONF_DIR/$role.toml
    run install -m 0644 "$SOURCE/systemd/$unit" "$UNIT_DIR/$unit"
    if systemd_running; then
        run systemctl daemon-reload
    fi
    run systemctl enable "$unit"
    if [[ -e $config ]] && systemd_running; then
        say "restarting $unit"
        run systemctl restart "$unit"
    elif [[ -e $config ]]; then
        say "systemd is not running here; $unit starts at the next boot"
    else
        say "$unit is enabled but not started: put its config in $config, then run"
        say "  sudo systemctl start $unit    (docs/OPERATIONS.md)"
    fi
}

uninstall() {
    local unit
    for unit in edgeproof-agent.service edgeproof-gateway.service; do
        if [[ -e $UNIT_DIR/$unit ]]; then
            say "removing $unit"
            if systemd_running; then
                run systemctl disable --now "$unit"
            else
                run systemctl disable "$unit"
            fi
            run rm -f "$UNIT_DIR/$unit"
        fi
    done
    if systemd_running; then
        run systemctl daemon-reload
    fi
    run rm -rf "$PREFIX"
    if [[ $purge == yes ]]; then
        say "purging $CONF_DIR, $STATE_DIR and user $SERVICE_USER"
        run rm -rf "$CONF_DIR" "$STATE_DIR"
        if id "$SERVICE_USER" >/dev/null 2>&1; then
            run userdel "$SERVICE_USER"
        fi
    else
        say "kept $CONF_DIR and $STATE_DIR (keys, outbox, log); --purge removes them"
    fi
}

main() {
    parse_args "$@"
    check_system
    if [[ $action == uninstall ]]; then
        uninstall
        return
    fi
    install_packages
    create_user
    create_dirs
    install_venv
    install_unit
    say "done: edgeproof $role installed"
}

main "$@"
