#!/usr/bin/env bash
# System services the integration tests use: Redis (and later dcmtk, Orthanc, Chromium).
# Installs the Debian packages where missing and starts Redis on loopback if it is not running.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    else
        echo "missing system packages: ${need[*]} (install them with apt-get as root)" >&2
        exit 1
    fi
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
