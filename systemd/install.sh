#!/usr/bin/env bash
# Install (or uninstall) edgeproof as a systemd service on Raspberry Pi OS or Debian.
#
#   sudo systemd/install.sh [--role agent|gateway] [--with-mosquitto]
#   sudo systemd/install.sh --uninstall [--role agent|gateway]
#   sudo systemd/install.sh --uninstall --role agent|gateway --purge [--yes]
#   systemd/install.sh --dry-run ...        print what would be done, change nothing
#
# Installing needs Python 3.11 or newer. It creates the `edgeproof` system user (in the
# `gpio` group when it exists), a virtualenv in /opt/edgeproof/venv with edgeproof installed
# from this checkout (the `pi` extra on a Raspberry Pi for the agent, the `gateway` and
# `provision` extras for the gateway), links the role's commands into /usr/local/bin
# (edgeproof-agent or edgeproof-gateway and edgeproof-provision; edgeproof-verify for both),
# installs the unit file, and enables it. The service is started
# only once its config (/etc/edgeproof/agent.toml or gateway.toml) exists. Running it again
# upgrades in place.
#
# Uninstalling stops and removes the role's unit (both units without --role), and
# /opt/edgeproof once no edgeproof unit is left. For the gateway it also restores the
# Debian Mosquitto config (/etc/mosquitto/mosquitto.conf.debian) if mosquitto.conf is
# still the link to edgeproof's config that docs/OPERATIONS.md §2.4 put in its place.
# /etc/edgeproof and /var/lib/edgeproof (keys, outbox, the gateway's log) are kept.
# --purge also deletes the files of the one role given with --role, and only after you
# confirm: type the role's name when asked, or pass --yes. The gateway's purge deletes its
# signing key and its log: keep a backup (docs/OPERATIONS.md, Backups).
#
# EDGEPROOF_ROOT=DIR runs everything against the file tree under DIR instead of / (tests,
# image builds): systemctl gets --root=DIR and no user is created or removed.
set -euo pipefail

ROOT=${EDGEPROOF_ROOT:-}
PYTHON=${EDGEPROOF_PYTHON:-python3}
PREFIX=$ROOT/opt/edgeproof
VENV=$PREFIX/venv
UNIT_DIR=$ROOT/etc/systemd/system
CONF_DIR=$ROOT/etc/edgeproof
STATE_DIR=$ROOT/var/lib/edgeproof
MOSQUITTO_CONF=$ROOT/etc/mosquitto/mosquitto.conf
BIN_DIR=$ROOT/usr/local/bin
SERVICE_USER=edgeproof
SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The files each role's --purge deletes from $CONF_DIR (names the docs and the provisioning
# bundles use); broker.password is shared and goes only with the last role.
AGENT_CONF_FILES=(agent.toml)
GATEWAY_CONF_FILES=(gateway.toml gateway.key admin.token admin-token broker-password
                    anchor-eth.key eth.key)

role=agent
role_given=no
action=install
purge=no
confirmed=no
dry_run=no
with_mosquitto=no

usage() {
    # The comment block at the top of this file, up to the first line that is not one.
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
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
                role_given=yes
                shift 2
                ;;
            --role=*) role=${1#--role=}; role_given=yes; shift ;;
            --uninstall) action=uninstall; shift ;;
            --purge) purge=yes; shift ;;
            --yes) confirmed=yes; shift ;;
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
    if [[ $purge == yes && $role_given == no ]]; then
        die "--purge deletes one role's keys and data: say which with --role agent|gateway"
    fi
    if [[ $confirmed == yes && $purge == no ]]; then
        die "--yes only confirms --purge"
    fi
}

check_system() {
    if [[ $dry_run == no && -z $ROOT && $(id -u) -ne 0 ]]; then
        die "run as root (sudo $0 ...)"
    fi
    [[ -r /etc/debian_version ]] || die "this installer supports Raspberry Pi OS and Debian only"
    command -v systemctl >/dev/null 2>&1 || die "systemd (systemctl) is required"
}

# One line and exit 1 unless $PYTHON is 3.11 or newer (edgeproof needs tomllib, 3.11 typing).
check_python() {
    local version
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
        || die "Python 3.11 or newer is required, and $PYTHON does not run (apt-get install python3)"
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        die "Python 3.11 or newer is required; $PYTHON is $version (Debian 12 and Raspberry Pi OS bookworm have 3.11)"
    fi
}

systemctl_() {
    if [[ -n $ROOT ]]; then
        run systemctl --root="$ROOT" "$@"
    else
        run systemctl "$@"
    fi
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
    "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)
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
    if [[ -n $ROOT ]]; then
        say "EDGEPROOF_ROOT is set: not creating user $SERVICE_USER"
        return
    fi
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
    if [[ -z $ROOT ]] && { [[ $dry_run == yes ]] || id "$SERVICE_USER" >/dev/null 2>&1; }; then
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
        run "$PYTHON" -m venv "$VENV"
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
        systemctl_ daemon-reload
    fi
    systemctl_ enable "$unit"
    if [[ -e $config ]] && systemd_running; then
        say "restarting $unit"
        systemctl_ restart "$unit"
    elif [[ -e $config ]]; then
        say "systemd is not running here; $unit starts at the next boot"
    else
        say "$unit is enabled but not started: put its config in $config, then run"
        say "  sudo systemctl start $unit    (docs/OPERATIONS.md)"
    fi
}

# The role's commands on PATH: links in /usr/local/bin (never over a file that is not ours).
role_commands() {
    if [[ $1 == gateway ]]; then
        echo edgeproof-gateway edgeproof-provision edgeproof-verify
    else
        echo edgeproof-agent edgeproof-verify
    fi
}

link_commands() {
    local cmd target
    run install -d -m 0755 "$BIN_DIR"
    for cmd in $(role_commands "$role"); do
        target=$BIN_DIR/$cmd
        if [[ -e $target && ! -L $target ]]; then
            say "warning: $target exists and is not edgeproof's link; left as it is"
            continue
        fi
        run ln -sfn "$VENV/bin/$cmd" "$target"
    done
    say "commands on PATH: $(role_commands "$role") (links in $BIN_DIR)"
}

# Remove the links into $PREFIX that link_commands made, once no unit needs them.
unlink_commands() {
    local cmd target
    for cmd in edgeproof-agent edgeproof-gateway edgeproof-provision edgeproof-verify; do
        target=$BIN_DIR/$cmd
        if [[ -L $target && $(readlink "$target") == "$PREFIX"/* ]]; then
            run rm -f "$target"
        fi
    done
}

# The roles uninstall removes: the one given, or both.
uninstall_roles() {
    if [[ $role_given == yes ]]; then
        echo "$role"
    else
        echo agent gateway
    fi
}

uninstall() {
    local r unit
    if [[ $purge == yes ]]; then
        confirm_purge  # before anything changes
    fi
    for r in $(uninstall_roles); do
        unit=edgeproof-$r.service
        if [[ -e $UNIT_DIR/$unit ]]; then
            say "removing $unit"
            if systemd_running; then
                systemctl_ disable --now "$unit"
            else
                systemctl_ disable "$unit"
            fi
            run rm -f "$UNIT_DIR/$unit"
        fi
        if [[ $r == gateway ]]; then
            restore_mosquitto_conf
        fi
    done
    if systemd_running; then
        systemctl_ daemon-reload
    fi
    if [[ -e $UNIT_DIR/edgeproof-agent.service || -e $UNIT_DIR/edgeproof-gateway.service ]]; then
        say "kept $PREFIX: another edgeproof unit still uses it"
    else
        run rm -rf "$PREFIX"
        unlink_commands
    fi
    if [[ $purge == yes ]]; then
        purge_role
    else
        say "kept $CONF_DIR and $STATE_DIR (keys, outbox, log); --purge --role ROLE removes a role's"
    fi
}

# Undo docs/OPERATIONS.md §2.4: mosquitto.conf a link to edgeproof's, Debian's kept as .debian.
restore_mosquitto_conf() {
    local backup=$MOSQUITTO_CONF.debian
    if [[ -L $MOSQUITTO_CONF && $(readlink "$MOSQUITTO_CONF") == *edgeproof* && -e $backup ]]; then
        say "restoring Mosquitto's own config from $backup"
        run rm -f "$MOSQUITTO_CONF"
        run mv "$backup" "$MOSQUITTO_CONF"
        if systemd_running; then
            systemctl_ try-restart mosquitto.service
        fi
    elif [[ -L $MOSQUITTO_CONF && $(readlink "$MOSQUITTO_CONF") == *edgeproof* ]]; then
        say "warning: $MOSQUITTO_CONF still links to edgeproof's config and $backup is missing;"
        say "  left as it is: restore a Mosquitto config by hand"
    fi
}

# --purge deletes keys and, for the gateway, the log: ask, unless --yes (or --dry-run).
confirm_purge() {
    local what answer
    if [[ $role == gateway ]]; then
        what="the gateway's signing key, admin token and its whole log database"
    else
        what="the device key, the outbox (records not yet sent) and the credit state"
    fi
    if [[ $confirmed == yes || $dry_run == yes ]]; then
        return
    fi
    if [[ ! -t 0 ]]; then
        die "--purge --role $role deletes $what; confirm with --yes"
    fi
    echo "install.sh: --purge --role $role deletes $what, for good."
    read -r -p "install.sh: type '$role' to confirm: " answer
    [[ $answer == "$role" ]] || die "not confirmed; nothing purged"
}

# Delete the role's files only; the other role's, and anything unknown, stay.
purge_role() {
    local f files other_conf
    if [[ $role == gateway ]]; then
        files=("${GATEWAY_CONF_FILES[@]}")
        other_conf=$CONF_DIR/agent.toml
        say "purging the gateway's files in $CONF_DIR, $STATE_DIR/gateway and ${ROOT}/var/lib/edgeproof-gateway"
        run rm -rf "$STATE_DIR/gateway" "${ROOT}/var/lib/edgeproof-gateway"
    else
        files=("${AGENT_CONF_FILES[@]}")
        other_conf=$CONF_DIR/gateway.toml
        say "purging the agent's files in $CONF_DIR and $STATE_DIR (not $STATE_DIR/gateway)"
        if [[ -d $STATE_DIR ]]; then
            run find "$STATE_DIR" -mindepth 1 -maxdepth 1 ! -name gateway -exec rm -rf {} +
        fi
    fi
    [[ -e $other_conf ]] || files+=(broker.password)
    for f in "${files[@]}"; do
        if [[ -e $CONF_DIR/$f ]]; then
            run rm -f "$CONF_DIR/$f"
        fi
    done
    for f in "$CONF_DIR" "$STATE_DIR"; do
        if [[ -d $f ]] && [[ -z $(find "$f" -mindepth 1 -maxdepth 1 -printf x) ]]; then
            run rmdir "$f"
        elif [[ -d $f && $dry_run == no ]]; then
            say "kept in $f (another role's or not edgeproof's):" \
                "$(find "$f" -mindepth 1 -maxdepth 1 -printf '%f ')"
        fi
    done
    if [[ -z $ROOT && ! -e $CONF_DIR && ! -e $STATE_DIR ]] && id "$SERVICE_USER" >/dev/null 2>&1; then
        run userdel "$SERVICE_USER"
    fi
}

main() {
    parse_args "$@"
    check_system
    if [[ $action == uninstall ]]; then
        uninstall
        return
    fi
    check_python
    install_packages
    create_user
    create_dirs
    install_venv
    link_commands
    install_unit
    say "done: edgeproof $role installed"
}

main "$@"
