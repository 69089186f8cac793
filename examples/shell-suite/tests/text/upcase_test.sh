# tr turns lower case into upper case.
[ "$(printf gorgon | tr "a-z" "A-Z")" = GORGON ]
