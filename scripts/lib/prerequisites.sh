# shellcheck shell=bash
# Shared by scripts/quickstart.sh and .ci/run: installs what gorgon needs at run time on a
# Debian machine (rsync, and RabbitMQ when no broker is reachable) and starts the broker;
# for the tests, also the project's own PostgreSQL server.
# Source it; it defines functions only.

BROKER_HOST=127.0.0.1
BROKER_PORT=5672

# The project's own PostgreSQL cluster, which the database tests use (tests/e2e/apps.rs):
# on a port of its own, so that a server the machine already runs (on 5432) is left alone.
POSTGRES_PORT=${GORGON_TEST_PGPORT:-54329}
POSTGRES_DATA=${GORGON_TEST_PGDATA:-/var/tmp/gorgon-postgresql}

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: '$*' needs root, and sudo is not installed; run this script as root" >&2
        return 1
    fi
}

# True when something accepts TCP connections on host:port.
port_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

broker_running() {
    port_open "$BROKER_HOST" "$BROKER_PORT"
}

rabbitmq_installed() {
    command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ]
}

# Installs rsync, and rabbitmq-server unless a broker already listens on 127.0.0.1:5672 (for
# example one running in Docker). Runs `apt-get update` once, and only when a package is missing.
install_missing_packages() {
    local missing=()
    command -v rsync >/dev/null 2>&1 || missing+=(rsync)
    # ss: a test reads the file server's listen backlog, bench/scale.sh counts connections.
    command -v ss >/dev/null 2>&1 || missing+=(iproute2)
    # openssl: the TLS test makes a certificate authority of its own.
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    if ! broker_running && ! rabbitmq_installed; then
        missing+=(rabbitmq-server)
    fi
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "rsync, ss, openssl and RabbitMQ are available"
        return 0
    fi
    apt_install "${missing[@]}"
}

# Installs Debian packages with apt-get (update first), or explains what is missing.
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: missing $*, and apt-get is not available; install them with your package manager" >&2
        return 1
    fi
    echo "installing $* with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "$@" </dev/null
}

# Starts RabbitMQ unless something already listens on 127.0.0.1:5672, then waits at most
# $1 seconds for it to accept connections. The broker is left running afterwards.
start_rabbitmq() {
    local wait_seconds=$1
    if broker_running; then
        echo "RabbitMQ is listening on $BROKER_HOST:$BROKER_PORT"
        return 0
    fi
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        echo "starting RabbitMQ with systemctl"
        as_root systemctl start rabbitmq-server || true
    fi
    if ! broker_running; then
        echo "starting RabbitMQ (rabbitmq-server -detached)"
        # Each connection is an open file of the broker's, and Debian's rabbitmq-server
        # switches to the rabbitmq user with su, whose PAM session sets the soft limit back
        # to 1024, which would cap a fleet at about 500 hosts of two connections: as root, the
        # broker starts as its user with setpriv (no PAM), keeping the raised limit.
        if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null 2>&1 && id rabbitmq >/dev/null 2>&1 \
            && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
            (ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
                cd /var/lib/rabbitmq && setpriv --reuid rabbitmq --regid rabbitmq --init-groups \
                    env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server -detached </dev/null)
        else
            as_root rabbitmq-server -detached </dev/null
        fi
    fi
    local waited=0
    until broker_running; do
        if [ "$waited" -ge "$wait_seconds" ]; then
            echo "error: RabbitMQ did not start listening on $BROKER_HOST:$BROKER_PORT within ${wait_seconds}s; see /var/log/rabbitmq/" >&2
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "RabbitMQ is listening on $BROKER_HOST:$BROKER_PORT (after ${waited}s)"
}

# Installs the test frameworks the built-in runners' tests use (tests/e2e/runners.rs): RSpec and
# Minitest from Debian (ruby-rspec, ruby-minitest; Active Record and sqlite3, ruby-activerecord
# and ruby-sqlite3, for Rails fixtures), SimpleCov and parallel_tests from Debian
# (ruby-simplecov, ruby-parallel-tests: workers' result sets come back as artifacts and
# collate, tests/e2e/artifacts.rs), and pytest and
# coverage.py (whose `combine` merges the artifacts' coverage data) with pip when python3 lacks
# them; and Chromium, in which the HTML report's test renders the page (tests/e2e/ops.rs).
install_test_frameworks() {
    local missing=()
    ruby -e 'require "rspec/core"' >/dev/null 2>&1 || missing+=(ruby-rspec)
    ruby -e 'require "minitest"' >/dev/null 2>&1 || missing+=(ruby-minitest)
    ruby -e 'require "simplecov"' >/dev/null 2>&1 || missing+=(ruby-simplecov)
    # With parallel_tests installed, as in a suite set up for it, SimpleCov loads it in the
    # workers and its last worker reads PARALLEL_PID_FILE: the SimpleCov test covers that.
    ruby -e 'require "parallel_tests"' >/dev/null 2>&1 || missing+=(ruby-parallel-tests)
    # Active Record with sqlite3: the Minitest runner's test of fixture sets a session cached
    # before their model was loaded (tests/e2e/runners.rs).
    ruby -e 'require "active_record"' >/dev/null 2>&1 || missing+=(ruby-activerecord)
    ruby -e 'require "sqlite3"' >/dev/null 2>&1 || missing+=(ruby-sqlite3)
    # The HTML report's test renders the page in headless Chromium.
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}" || return 1
    fi
    if ! python3 -c 'import pytest' >/dev/null 2>&1; then
        echo "installing pytest with pip"
        python3 -m pip install --quiet pytest
    fi
    if ! python3 -c 'import coverage' >/dev/null 2>&1; then
        echo "installing coverage.py with pip"
        python3 -m pip install --quiet coverage
    fi
    ruby -e 'require "rspec/core"; require "minitest"; require "simplecov"; puts "ruby #{RUBY_VERSION}, rspec #{RSpec::Core::Version::STRING}, minitest #{Minitest::VERSION}, simplecov #{SimpleCov::VERSION}"'
    python3 -c 'import sys, pytest; print("python %s, pytest %s" % (sys.version.split()[0], pytest.__version__))'
    chromium --version
}

# The bin folder of the newest PostgreSQL server Debian installed (/usr/lib/postgresql/N/bin).
postgres_bin_dir() {
    local dir
    dir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    [ -x "$dir/pg_ctl" ] || return 1
    echo "$dir"
}

# Installs Debian's postgresql (server and psql) unless both are there.
install_postgresql() {
    if postgres_bin_dir >/dev/null && command -v psql >/dev/null 2>&1; then
        echo "PostgreSQL is installed ($(postgres_bin_dir))"
        return 0
    fi
    apt_install postgresql
}

# Runs a command as the owner of the project's cluster: the postgres user when we are root
# (the server refuses to run as root), ourselves otherwise.
as_postgres_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Starts the project's own PostgreSQL cluster unless something already listens on
# 127.0.0.1:$POSTGRES_PORT: made once in $POSTGRES_DATA (superuser postgres, trust
# authentication, listening on 127.0.0.1 only, its socket in its own folder), then started
# with pg_ctl, waiting at most $1 seconds. Never touches another cluster. Idempotent.
start_postgresql() {
    local wait_seconds=$1
    if port_open 127.0.0.1 "$POSTGRES_PORT"; then
        echo "PostgreSQL is listening on 127.0.0.1:$POSTGRES_PORT"
        return 0
    fi
    local bin
    bin=$(postgres_bin_dir) || {
        echo "error: no PostgreSQL server under /usr/lib/postgresql; run install_postgresql" >&2
        return 1
    }
    if [ ! -f "$POSTGRES_DATA/PG_VERSION" ]; then
        echo "making the project's PostgreSQL cluster in $POSTGRES_DATA"
        mkdir -p "$POSTGRES_DATA"
        [ "$(id -u)" -ne 0 ] || chown postgres: "$POSTGRES_DATA"
        chmod 700 "$POSTGRES_DATA"
        as_postgres_owner "$bin/initdb" -D "$POSTGRES_DATA" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C >/dev/null
    fi
    echo "starting PostgreSQL on 127.0.0.1:$POSTGRES_PORT (pg_ctl, $POSTGRES_DATA)"
    as_postgres_owner "$bin/pg_ctl" -D "$POSTGRES_DATA" -l "$POSTGRES_DATA/server.log" \
        -o "-c listen_addresses=127.0.0.1 -c port=$POSTGRES_PORT -c unix_socket_directories=$POSTGRES_DATA" \
        -w -t "$wait_seconds" start >/dev/null || {
        echo "error: PostgreSQL did not start on 127.0.0.1:$POSTGRES_PORT within ${wait_seconds}s; see $POSTGRES_DATA/server.log" >&2
        return 1
    }
    echo "PostgreSQL is listening on 127.0.0.1:$POSTGRES_PORT"
}

# Installs promtool (Debian's prometheus package), which the metrics test runs on the
# listener's /metrics. The package also brings a Prometheus server, which its scripts enable
# where systemd runs: meant for machines that run the tests, not for production hosts.
install_promtool() {
    if ! command -v promtool >/dev/null 2>&1; then
        apt_install prometheus || return 1
    fi
    promtool --version 2>&1 | head -n 1
}
