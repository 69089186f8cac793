# The remainder of a division.
[ $((17 % 5)) -eq 2 ]
