# Removing a prefix with parameter expansion.
path=tests/text/prefix_test.sh
[ "${path#tests/}" = text/prefix_test.sh ]
