# The workspace holds the synced project, including this file.
[ -f tests/files/workspace_test.sh ]
[ -f gorgon.json ]
