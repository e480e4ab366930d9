#!/usr/bin/env bash
# System services the integration tests use: Redis, dcmtk, dicom3tools, Orthanc, Chromium.
# Installs the Debian packages where missing and starts Redis on loopback if it is not running.
set -euo pipefail
# command -> Debian package: Redis, dcmtk (the modality in PACS tests; dsrdump checks our SRs),
# dicom3tools (dciodvfy, the standard's validator run over every SEG/SR/SC we write), Orthanc
# with DICOMweb (the PACS), Chromium and its driver (the web page's end-to-end test).
declare -A packages=(
    [redis-server]=redis-server
    [/usr/bin/storescu]=dcmtk
    [/usr/bin/dsrdump]=dcmtk
    [/usr/bin/dciodvfy]=dicom3tools
    [Orthanc]=orthanc
    [/usr/share/orthanc/plugins/libOrthancDicomWeb.so]=orthanc-dicomweb
    [chromium]=chromium
    [chromedriver]=chromium-driver
)
need=()
for probe in "${!packages[@]}"; do
    if [[ $probe == /* ]]; then [ -e "$probe" ] || need+=("${packages[$probe]}")
    else command -v "$probe" >/dev/null || need+=("${packages[$probe]}"); fi
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    else
        echo "missing system packages: ${need[*]} (install them with apt-get as root)" >&2
        exit 1
    fi
fi
# docker-compose (Debian, v1) only validates docker-compose.yml (scripts/lint-deploy.sh); no
# engine: --no-install-recommends keeps apt from pulling docker.io and containerd.
if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose
    else
        echo "missing system package: docker-compose (install it with apt-get as root)" >&2
        exit 1
    fi
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
