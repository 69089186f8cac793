#!/usr/bin/env bash
# Fetches and unpacks the third-party suites of bench/real.sh from package registries only, and
# installs what they need; idempotent, cached under GORGON_SUITES (default
# /var/cache/gorgon-bench-suites). bench/real.sh sources it; run alone, it only prepares.
#
#   pytest    networkx (PyPI wheel, which ships its tests) in a venv of its own with pytest and
#             pytest-xdist, and nothing else: numpy, scipy, pandas, matplotlib... stay absent, so
#             the test modules that `pytest.importorskip` them are skipped at module level.
#   rspec     rubocop (Debian source package; its upstream tarball), with its runtime gems and
#             webmock from Debian's ruby-* packages.
#   minitest  Active Record of rails (Debian source package, with Debian's patches) on sqlite3
#             in memory, with activesupport, activemodel and the rest from Debian's packages.
#   postgresql  the same tree of Active Record, on PostgreSQL: Debian's ruby-pg, and the
#             project's own PostgreSQL server on 127.0.0.1:54329 (scripts/lib/prerequisites.sh
#             installs and starts it when it is not running).
#
# apt-get needs root. A deb-src entry is added (/etc/apt/sources.list.d/gorgon-bench-src.sources,
# the URIs of debian.sources) if the source packages are not known to apt yet.
# Usage: bench/real-suites.sh [pytest] [rspec] [minitest] [postgresql]   (default: all four)
set -euo pipefail

suites_root=${GORGON_SUITES:-/var/cache/gorgon-bench-suites}
NETWORKX_VERSION=${NETWORKX_VERSION:-3.6.1}
PYTEST_VERSION=${PYTEST_VERSION:-9.2.0}
RUBOCOP_SOURCE=${RUBOCOP_SOURCE:-rubocop=1.39.0+dfsg-1}
RAILS_SOURCE=${RAILS_SOURCE:-rails=2:6.1.7.10+dfsg-1~deb12u2}

pytest_venv=$suites_root/pytest/venv
pytest_tree=$suites_root/pytest/networkx-$NETWORKX_VERSION
rspec_tree=$suites_root/rspec/rubocop-${RUBOCOP_SOURCE#*=}
rails_version=${RAILS_SOURCE#*=}
rails_version=${rails_version#*:}
minitest_tree=$suites_root/minitest/rails-$rails_version

# The Debian packages each Ruby suite needs (runtime gems of the package, test helpers, and
# ruby-parallel-tests for the framework's own parallel runner).
rspec_packages=(ruby ruby-rspec ruby-json ruby-parallel ruby-whitequark-parser ruby-rainbow
    ruby-regexp-parser ruby-rubocop-ast ruby-progressbar ruby-unicode-display-width ruby-webmock
    ruby-parallel-tests)
minitest_packages=(ruby rake ruby-minitest ruby-activemodel ruby-activesupport ruby-sqlite3
    ruby-bcrypt ruby-byebug ruby-rack ruby-actionpack ruby-parallel-tests)
postgresql_packages=(ruby-pg)

note() { echo "real-suites: $*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "error: installing $* needs root (apt-get)" >&2
        exit 1
    fi
}

# apt_packages PACKAGE...: installs the packages that are not installed yet.
apt_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    need_root "${missing[*]}"
    note "apt-get install ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >/dev/null; then
        timeout 600 apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get install -y -q --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

# ensure_deb_src PACKAGE=VERSION: makes apt know that source package version, adding a deb-src
# entry with the URIs of the machine's binary entries if needed.
ensure_deb_src() {
    local package=${1%%=*} version=${1#*=}
    # Not `grep -q`: under pipefail, apt-cache killed by SIGPIPE when grep stops reading
    # early would make a package that is there look missing.
    if apt-cache showsrc "$package" 2>/dev/null | grep -xF "Version: $version" >/dev/null; then
        return
    fi
    need_root "the source package $1"
    local list=/etc/apt/sources.list.d/gorgon-bench-src.sources
    if [ ! -e "$list" ]; then
        if [ -e /etc/apt/sources.list.d/debian.sources ]; then
            sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$list"
        else
            grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >"${list%.sources}.list"
        fi
        note "added deb-src entries ($list)"
    fi
    timeout 600 apt-get update -q >/dev/null
    if ! apt-cache showsrc "$package" 2>/dev/null | grep -xF "Version: $version" >/dev/null; then
        echo "error: apt knows no source package $1" >&2
        exit 1
    fi
}

# source_download DIR PACKAGE=VERSION: downloads the source package into DIR. Prints nothing;
# fails only if not even the upstream tarball arrived (apt-get source gives up on the whole
# package when one of its files is missing on the mirror).
source_download() {
    local dir=$1 spec=$2 package=${2%%=*}
    mkdir -p "$dir"
    ensure_deb_src "$spec"
    (cd "$dir" && timeout 1800 apt-get source -q --download-only "$spec" >/dev/null 2>&1) || true
    if ! compgen -G "$dir/${package}_*.orig.tar.*" >/dev/null; then
        echo "error: apt-get source --download-only $spec fetched no upstream tarball" >&2
        exit 1
    fi
}

prepare_pytest() {
    if ! "$pytest_venv/bin/python" -c 'import pytest, xdist' 2>/dev/null; then
        note "venv $pytest_venv: pytest==$PYTEST_VERSION pytest-xdist"
        rm -rf "$pytest_venv"
        mkdir -p "$(dirname "$pytest_venv")"
        python3 -m venv "$pytest_venv"
        timeout 1800 "$pytest_venv/bin/pip" install -q --disable-pip-version-check \
            "pytest==$PYTEST_VERSION" pytest-xdist
    fi
    if [ ! -d "$pytest_tree" ]; then
        local dl=$suites_root/pytest/dl tmp=$pytest_tree.tmp
        note "networkx $NETWORKX_VERSION -> $pytest_tree"
        timeout 1800 "$pytest_venv/bin/pip" download -q --disable-pip-version-check --no-deps \
            --only-binary :all: --dest "$dl" "networkx==$NETWORKX_VERSION"
        rm -rf "$tmp"
        mkdir -p "$tmp"
        # The wheel's tree as a project: the package with its tests, and its dist-info (its
        # entry points register the test backend that networkx's conftest.py looks for).
        "$pytest_venv/bin/python" -m zipfile -e "$dl/networkx-$NETWORKX_VERSION-py3-none-any.whl" "$tmp"
        mv "$tmp" "$pytest_tree"
    fi
    local module
    for module in numpy scipy pandas matplotlib; do
        if "$pytest_venv/bin/python" -c "import $module" 2>/dev/null; then
            note "warning: $module is importable in $pytest_venv: fewer modules are skipped"
        fi
    done
}

prepare_rspec() {
    apt_packages "${rspec_packages[@]}"
    if [ ! -d "$rspec_tree" ]; then
        local dl=$suites_root/rspec/dl tmp=$rspec_tree.tmp
        note "$RUBOCOP_SOURCE -> $rspec_tree"
        source_download "$dl" "$RUBOCOP_SOURCE"
        rm -rf "$tmp"
        mkdir -p "$tmp"
        # Upstream's tree as released (Debian's packaging is not needed to run its specs).
        tar -xf "$(compgen -G "$dl/rubocop_*.orig.tar.*" | head -n 1)" -C "$tmp"
        mv "$tmp"/rubocop-* "$rspec_tree"
        rmdir "$tmp"
    fi
}

prepare_minitest() {
    apt_packages "${minitest_packages[@]}" dpkg-dev
    if [ ! -d "$minitest_tree" ]; then
        local dl=$suites_root/minitest/dl
        note "$RAILS_SOURCE -> $minitest_tree"
        source_download "$dl" "$RAILS_SOURCE"
        rm -rf "$minitest_tree.tmp"
        # Debian's patches make rails 6.1 work with Debian's ruby 3.1 and gems.
        local dsc
        dsc=$(compgen -G "$dl/rails_*.dsc" | head -n 1)
        if ! (cd "$dl" && timeout 600 dpkg-source -x "$(basename "$dsc")" "$minitest_tree.tmp") \
            >"$dl/dpkg-source.log" 2>&1; then
            cat "$dl/dpkg-source.log" >&2
            exit 1
        fi
        mv "$minitest_tree.tmp" "$minitest_tree"
    fi
}

prepare_postgresql() {
    prepare_minitest
    apt_packages "${postgresql_packages[@]}"
    # shellcheck source=scripts/lib/prerequisites.sh
    . "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/prerequisites.sh"
    install_postgresql >&2
    start_postgresql 60 >&2
}

# minitest_files [ADAPTER]: Active Record's test files for ADAPTER (default sqlite3), as `rake
# test:ADAPTER` lists them (test/cases/**/*_test.rb except adapters/, then
# adapters/ADAPTER/**), one per line; run in the activerecord folder.
minitest_files() {
    ruby -e 'puts Dir["test/cases/**/*_test.rb"].reject { |f| f.include?("/adapters/") }.sort +
                  Dir["test/cases/adapters/#{ARGV[0]}/**/*_test.rb"].sort' "${1:-sqlite3}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    suites=("$@")
    [ ${#suites[@]} -gt 0 ] || suites=(pytest rspec minitest postgresql)
    for suite in "${suites[@]}"; do
        case $suite in
        pytest | rspec | minitest | postgresql) "prepare_$suite" ;;
        *)
            echo "usage: $0 [pytest] [rspec] [minitest] [postgresql]" >&2
            exit 2
            ;;
        esac
    done
    echo "suites ready under $suites_root"
fi
