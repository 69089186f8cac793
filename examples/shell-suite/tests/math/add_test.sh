# Addition in shell arithmetic.
[ $((1 + 1)) -eq 2 ]
