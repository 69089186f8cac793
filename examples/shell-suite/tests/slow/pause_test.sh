# Another slower file, so that both workers have a long one to run.
sleep 0.2
[ $((2 * 2 * 2)) -eq 8 ]
