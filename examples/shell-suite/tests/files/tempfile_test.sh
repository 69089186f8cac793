# Writing and reading back a temporary file.
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
echo stheno > "$tmp"
[ "$(cat "$tmp")" = stheno ]
