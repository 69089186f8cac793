#!/usr/bin/env bash
# Builds the Debian package, target/debian/gorgon_VERSION-1_ARCH.deb, with cargo-deb: the
# release binary, then its shell completions and man pages (made by the binary itself, so
# they always match it), then the package (metadata in Cargo.toml [package.metadata.deb]).
# Prints the package's path on its last line.
#
# Usage: scripts/package-deb.sh
#   needs cargo-deb: cargo install cargo-deb --locked
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if ! cargo deb --version >/dev/null 2>&1; then
    echo "error: cargo-deb is not installed; install it with: cargo install cargo-deb --locked" >&2
    exit 1
fi

cargo build --release --locked
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
gorgon=$target_dir/release/gorgon

# cargo-deb reads the assets under target/package/ (Cargo.toml), wherever the target dir is.
generated=$target_dir/package
rm -rf "$generated/completions" "$generated/man"
mkdir -p "$generated/completions" "$generated/man"
"$gorgon" completions bash >"$generated/completions/gorgon.bash"
"$gorgon" completions zsh >"$generated/completions/_gorgon"
"$gorgon" completions fish >"$generated/completions/gorgon.fish"
"$gorgon" __man "$generated/man"
# Debian ships man pages compressed; -n leaves the time out, so the package is reproducible.
gzip -9n "$generated/man"/*.1

cargo deb --no-build --locked | tail -n 1
