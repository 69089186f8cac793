# This file fails on purpose, to show what a failure report looks like.
# Run it with: gorgon start failing/broken_test.sh
echo "expected 2 + 2 to be 5, got $((2 + 2))" >&2
[ $((2 + 2)) -eq 5 ]
