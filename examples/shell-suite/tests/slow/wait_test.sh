# A slower file: it sleeps a fifth of a second before its check.
sleep 0.2
[ "$(echo euryale)" = euryale ]
