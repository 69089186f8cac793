# Integer division truncates toward zero.
[ $((7 / 2)) -eq 3 ]
