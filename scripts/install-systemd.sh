#!/usr/bin/env bash
# Install the qwen3-tts systemd units (qwen3-tts@.service, qwen3-tts.target and the per-role drop-ins).
#
#   sudo scripts/install-systemd.sh [--prefix /opt/qwen3-tts] [--user qwen3-tts] [--unit-dir DIR]
#   scripts/install-systemd.sh --dry-run --unit-dir DIR [--prefix P] [--user U]
#
# --prefix    where the project is installed (its .venv/bin/qwen3-tts-daemon is ExecStart); default
#             /opt/qwen3-tts. It must be readable by the service user.
# --user      service user and group, created with useradd --system if absent; default qwen3-tts.
#             Clients need to be in this group to use the sockets in /run/qwen3-tts.
# --unit-dir  where the units go; default /etc/systemd/system.
# --dry-run   only render the units into --unit-dir (required then): no user, no /etc/qwen3-tts, no
#             systemctl. Used by the tests (systemd-analyze verify on the result).
#
# A real install also creates /etc/qwen3-tts/config.toml (from qwen3-tts.example.toml) and a commented
# /etc/qwen3-tts/env when they are absent (existing files are never overwritten), adds the user to the
# `render`/`video` groups when they exist (NPU access for the vocoder), and runs systemctl daemon-reload.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
src="$repo/systemd"

prefix=/opt/qwen3-tts
user=qwen3-tts
unit_dir=""
dry_run=0
etc_dir=/etc/qwen3-tts

die() { echo "install-systemd: $*" >&2; exit 1; }
usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; prefix="$2"; shift 2 ;;
        --prefix=*) prefix="${1#*=}"; shift ;;
        --user) [ $# -ge 2 ] || die "--user needs a value"; user="$2"; shift 2 ;;
        --user=*) user="${1#*=}"; shift ;;
        --unit-dir) [ $# -ge 2 ] || die "--unit-dir needs a value"; unit_dir="$2"; shift 2 ;;
        --unit-dir=*) unit_dir="${1#*=}"; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

case "$prefix" in
    /*) ;;
    *) die "--prefix must be an absolute path, got '$prefix'" ;;
esac
prefix="${prefix%/}"
[ -n "$prefix" ] || die "--prefix must not be /"
# systemd unit files: no whitespace or specifier characters in paths we write unquoted.
case "$prefix" in
    *[[:space:]%\\\"\']*) die "--prefix must not contain whitespace, quotes, backslashes or '%': '$prefix'" ;;
esac
[[ "$user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "invalid user name '$user'"

if [ "$dry_run" = 1 ]; then
    [ -n "$unit_dir" ] || die "--dry-run needs --unit-dir DIR"
else
    unit_dir="${unit_dir:-/etc/systemd/system}"
    [ "$(id -u)" = 0 ] || die "run as root (or use --dry-run --unit-dir DIR)"
fi

# Render: the units in the repository are written for prefix /opt/qwen3-tts and user qwen3-tts.
render() {  # render SRC DEST
    local esc_prefix
    esc_prefix="$(printf '%s' "$prefix" | sed 's/[&|]/\\&/g')"
    sed -e "s|/opt/qwen3-tts|$esc_prefix|g" \
        -e "s|^User=qwen3-tts\$|User=$user|" \
        -e "s|^Group=qwen3-tts\$|Group=$user|" \
        "$1" > "$2.tmp"
    chmod 0644 "$2.tmp"
    mv -f "$2.tmp" "$2"
    echo "  $2"
}

echo "rendering units (prefix $prefix, user $user) into $unit_dir:"
mkdir -p "$unit_dir"
render "$src/qwen3-tts@.service" "$unit_dir/qwen3-tts@.service"
render "$src/qwen3-tts.target" "$unit_dir/qwen3-tts.target"
for d in "$src"/*.service.d; do
    [ -d "$d" ] || continue
    name="$(basename "$d")"
    mkdir -p "$unit_dir/$name"
    for f in "$d"/*.conf; do
        [ -e "$f" ] || continue
        render "$f" "$unit_dir/$name/$(basename "$f")"
    done
done

if [ "$dry_run" = 1 ]; then
    echo "dry run: no user, no $etc_dir, no systemctl"
    exit 0
fi

# --- service user
if id -u "$user" >/dev/null 2>&1; then
    echo "user $user exists"
else
    nologin="$(command -v nologin || echo /usr/sbin/nologin)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell "$nologin" \
        --comment "Qwen3-TTS daemons" "$user"
    echo "created system user $user"
fi
for g in render video; do
    if getent group "$g" >/dev/null; then
        usermod -a -G "$g" "$user"
        echo "added $user to group $g (NPU device access)"
    fi
done

# --- configuration
install -d -m 0750 -o root -g "$user" "$etc_dir"
if [ -e "$etc_dir/config.toml" ]; then
    echo "$etc_dir/config.toml exists: left unchanged"
else
    # runtime_dir set explicitly: clients read this file too, and a login session's $XDG_RUNTIME_DIR
    # would otherwise point them at /run/user/UID/qwen3-tts instead of the system daemons' sockets.
    # voices_dir: the gateway's state directory (qwen3-tts@gateway.service.d/10-voices.conf), where uploads go.
    sed -e 's|^# runtime_dir = "/run/qwen3-tts"$|runtime_dir = "/run/qwen3-tts"   # set by install-systemd.sh (RuntimeDirectory=)|' \
        -e 's|^# voices_dir = "/var/lib/qwen3-tts/voices"$|voices_dir = "/var/lib/qwen3-tts/voices"   # set by install-systemd.sh (the gateway'"'"'s StateDirectory=)|' \
        "$repo/qwen3-tts.example.toml" > "$etc_dir/config.toml.tmp"
    chown root:"$user" "$etc_dir/config.toml.tmp"
    chmod 0640 "$etc_dir/config.toml.tmp"
    mv -f "$etc_dir/config.toml.tmp" "$etc_dir/config.toml"
    echo "created $etc_dir/config.toml (runtime_dir = /run/qwen3-tts, voices_dir = /var/lib/qwen3-tts/voices, every other key commented out = defaults)"
fi
if [ ! -e "$etc_dir/env" ]; then
    umask 027
    cat > "$etc_dir/env" <<'EOF'
# Environment for the qwen3-tts daemons (EnvironmentFile= of qwen3-tts@.service), one KEY=value a line.
# Overrides /etc/qwen3-tts/config.toml, e.g.:
# QWEN3_TTS_MODEL_DIR=/opt/qwen3-tts/models/qwen3-tts-0.6b
# QWEN3_TTS_VOCODER_CPUS=0-3
# QWEN3_TTS_LOG_LEVEL=DEBUG
EOF
    chgrp "$user" "$etc_dir/env"
    echo "created $etc_dir/env"
fi

# --- checks that would otherwise only show up as a failed start
exe="$prefix/.venv/bin/qwen3-tts-daemon"
[ -x "$exe" ] || echo "warning: $exe does not exist yet: install the project there first (bash launch.sh sets up .venv)" >&2
if command -v runuser >/dev/null && ! runuser -u "$user" -- test -r "$prefix/.venv" 2>/dev/null; then
    echo "warning: $prefix/.venv is not readable by $user" >&2
fi

# --- systemd
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl daemon-reload
    echo "systemctl daemon-reload: done"
else
    echo "systemd is not running here: skipped systemctl daemon-reload" >&2
fi

cat <<EOF

Installed. Next:
  systemctl enable --now qwen3-tts.target        # start all three now and at boot
  systemctl status 'qwen3-tts@*'                  # STATUS= shows role, model, threads, CPUs
  journalctl -u 'qwen3-tts@*' -f
  usermod -a -G $user YOUR_USER                   # let a login user run the client against /run/qwen3-tts
Configuration: $etc_dir/config.toml and $etc_dir/env; then systemctl restart qwen3-tts.target
EOF
