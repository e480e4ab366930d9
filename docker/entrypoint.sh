#!/bin/sh
# Entrypoint of the breastdx service images (/usr/local/bin/breastdx-entrypoint): refuse to start
# while any environment variable still holds the .env.example placeholder "changethis" (a secret
# left at its default, also inside a URL or a JSON list), then run the command as PID 1's child of
# tini (compose `init: true`) or as PID 1 itself. Names the variables, never their values.
set -eu

placeholder=changethis
found=""
for name in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p'); do
    case "$(printenv "$name" || true)" in
        *"$placeholder"*) found="$found $name" ;;
    esac
done
if [ -n "$found" ]; then
    echo "breastdx: refusing to start: replace the placeholder \"$placeholder\" in:$found" >&2
    echo "breastdx: (in .env; generate secrets with: openssl rand -hex 32)" >&2
    exit 78  # EX_CONFIG
fi
exec "$@"
