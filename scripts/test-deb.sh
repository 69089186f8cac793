#!/usr/bin/env bash
# Tests the Debian package on this machine (as root; it installs and removes the package):
# builds it (scripts/package-deb.sh), installs it with dpkg -i, checks the gorgon user, the
# unit (systemd-analyze verify and security), the completions and man pages; sets the
# installed config to the local broker as an operator would, runs the installed binary as
# the gorgon user with it (`gorgon listen --check`, then a listener that serves the example
# suite of scripts/quickstart.sh end to end); and checks that dpkg -r removes every file of
# the package but the config. Needs RabbitMQ on 127.0.0.1:5672 (guest/guest).
#
# Usage: scripts/test-deb.sh [PACKAGE.deb]   (default: build it)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
config=/etc/gorgon/gorgon_listener.json
unit=gorgon-listener.service

step() { printf '\n==> %s\n' "$*"; }
fail() {
    echo "FAILED: $*" >&2
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    fail "run it as root: it installs and removes the package"
fi

listener_pid=""
# shellcheck disable=SC2317  # only reached through the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT
    if [ -n "$listener_pid" ]; then
        kill -TERM "$listener_pid" 2>/dev/null || true
        wait "$listener_pid" 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT

if [ $# -ge 1 ]; then
    package=$1
else
    step "Building the package"
    package=$("$repo/scripts/package-deb.sh" | tail -n 1)
fi
[ -f "$package" ] || fail "no package at $package"
echo "$package"

step "dpkg -i"
# From a clean slate: a config left by an earlier install would be kept as it was.
if dpkg-query -W gorgon >/dev/null 2>&1; then
    dpkg --purge gorgon
fi
dpkg -i "$package"
getent passwd gorgon >/dev/null || fail "the gorgon user does not exist"
echo "user: $(getent passwd gorgon)"
[ "$(stat -c %U:%G:%a "$config")" = root:gorgon:640 ] || fail "$config is $(stat -c %U:%G:%a "$config"), not root:gorgon:640"
dpkg-query -W -f='${Conffiles}\n' gorgon | grep -q " $config " || fail "$config is not a conffile"
unit_path=$(dpkg -L gorgon | grep "/$unit\$") || fail "no $unit in the package"
for file in /usr/bin/gorgon /usr/share/bash-completion/completions/gorgon \
    /usr/share/zsh/vendor-completions/_gorgon /usr/share/fish/vendor_completions.d/gorgon.fish \
    /usr/share/man/man1/gorgon.1.gz /usr/share/man/man1/gorgon-listen.1.gz; do
    [ -f "$file" ] || fail "the package did not install $file"
done
zcat /usr/share/man/man1/gorgon-listen.1.gz | grep -q '^\.TH' || fail "gorgon-listen.1 is no man page"

step "The unit: systemd-analyze verify and security"
if command -v systemd-analyze >/dev/null 2>&1; then
    # --man=no: the unit names its man page, which verify would try to open with man(1).
    systemd-analyze verify --man=no "$unit_path"
    systemd-analyze security --offline=true "$unit_path" | tail -n 1
else
    echo "systemd-analyze is not available here: the unit is not verified"
fi

step "The installed config, set to the local broker as an operator would"
cluster_id="test-deb-$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
listener_name=$cluster_id
listener_password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
sed -i \
    -e 's/"rabbitmq.example.com"/"127.0.0.1"/' \
    -e "s/\"build-agent-1\"/\"$listener_name\"/" \
    -e "s/\"cluster_id\": \"default\"/\"cluster_id\": \"$cluster_id\"/" \
    -e "s/^  \"worker_slots\": 4,/  \"worker_slots\": 2,\n  \"file_server\": { \"listener_password\": \"$listener_password\" },/" \
    "$config"

# Becomes the command, run as the gorgon user in its home as the unit runs it: called in a
# subshell, whose process the command then is (a signal to $! reaches it).
exec_as_gorgon() {
    cd /var/lib/gorgon
    exec setpriv --reuid=gorgon --regid=gorgon --init-groups \
        env HOME=/var/lib/gorgon USER=gorgon LOGNAME=gorgon "$@"
}

step "gorgon listen --check, as gorgon"
(exec_as_gorgon /usr/bin/gorgon listen --check --config "$config")

step "A listener, as gorgon, serving the example suite"
(exec_as_gorgon /usr/bin/gorgon listen --config "$config" </dev/null) &
listener_pid=$!
GORGON_BIN=/usr/bin/gorgon GORGON_LISTENER_NAME=$listener_name GORGON_CLUSTER_ID=$cluster_id \
    GORGON_LISTENER_PASSWORD=$listener_password "$repo/scripts/quickstart.sh"
kill -TERM "$listener_pid"
wait "$listener_pid" || fail "the listener exited with $?"
listener_pid=""
grep -q "$listener_name" /var/log/gorgon/listener.log || fail "no listener log in /var/log/gorgon"

step "dpkg -r"
installed=$(dpkg -L gorgon)
dpkg -r gorgon
while IFS= read -r path; do
    if [ "$path" = "$config" ]; then
        [ -f "$path" ] || fail "dpkg -r removed the config"
    elif [ -f "$path" ] || [ -L "$path" ]; then
        fail "dpkg -r left $path"
    fi
done <<<"$installed"
echo "every file of the package is gone but $config"

step "The package passed"
