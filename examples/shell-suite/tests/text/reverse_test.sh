# Reversing the order of lines.
[ "$(printf "a\nb\nc\n" | sort -r | tr -d "\n")" = cba ]
