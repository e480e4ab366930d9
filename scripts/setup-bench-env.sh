#!/usr/bin/env bash
# The benchmark environment of bench/bench_peers.py: breastdx's serving set plus the serving
# peers (LitServe, BentoML) pinned in bench/constraints-bench.txt. A venv of its own,
# so the peers never reach the product's environments (.venv, .venv-serve) or its extras.
#   scripts/setup-bench-env.sh [VENV_DIR]        default .venv-bench
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-bench}
scripts/setup-env.sh "$venv" serve
stamp="$venv/.breastdx-bench-installed"
want="$(cat bench/constraints-bench.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0  # up to date
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
peers=$(grep -Ev '^\s*(#|$)' bench/constraints-bench.txt | sed 's/[=<>!~].*//')
# shellcheck disable=SC2086  # one package name per word
"$venv/bin/python" -m pip install -q -c constraints.txt -c bench/constraints-bench.txt $peers
"$venv/bin/python" -m pip check || echo "pip check reports conflicts in $venv (above)" >&2
echo "$want" > "$stamp"
