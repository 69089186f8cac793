# Multiplication in shell arithmetic.
[ $((6 * 7)) -eq 42 ]
