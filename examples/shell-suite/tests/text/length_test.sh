# The length of a string.
word=medusa
[ "${#word}" -eq 6 ]
