#!/usr/bin/env bash
# Create (or update) a virtual environment and install breastdx with the given extras.
#   scripts/setup-env.sh VENV_DIR EXTRAS        e.g. scripts/setup-env.sh .venv-serve serve
# Every install goes through constraints.txt, which pins torch/torchvision to the CPU builds.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:?usage: setup-env.sh VENV_DIR EXTRAS}
extras=${2:?usage: setup-env.sh VENV_DIR EXTRAS}
python=${PYTHON:-python3}

stamp="$venv/.breastdx-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16) $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0  # up to date
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install -q --upgrade "pip>=24" "setuptools>=68" wheel
"$venv/bin/python" -m pip install -q -c constraints.txt -e ".[$extras]"

# torchvision from the index is a CUDA build; next to the CPU torch its import fails. Only where
# it does, install the compatibility hook (tools/torchvision_cpu_compat.py) into this venv.
if "$venv/bin/python" -c "import torch" 2>/dev/null; then
    site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    rm -f "$site/_breastdx_tv_compat.py" "$site/breastdx-tv-compat.pth"
    if ! "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
        cp tools/torchvision_cpu_compat.py "$site/_breastdx_tv_compat.py"
        echo "import _breastdx_tv_compat" > "$site/breastdx-tv-compat.pth"
        "$venv/bin/python" -c "import torchvision.models" \
            || { echo "torchvision still fails to import" >&2; exit 1; }
        echo "installed the torchvision CPU compatibility hook into $venv" >&2
    fi
fi
echo "$want" > "$stamp"
