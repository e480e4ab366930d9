# syntax=docker/dockerfile:1
# breastdx training image: ".[train]" (torch, torchvision, albumentations, ONNX export) for
# `breastdx train`, `breastdx grid` and `breastdx export`.
# Build from the repository root:
#   docker build -f docker/train.Dockerfile -t breastdx-train .                     # CPU torch
#   docker build -f docker/train.Dockerfile -t breastdx-train:cu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .       # CUDA torch
# Versions stay in constraints.txt (torch==2.13.0, torchvision==0.28.0); the index only picks the
# build of those versions: "==2.13.0" matches 2.13.0+cpu as well as 2.13.0+cu130. Choose the CUDA
# index whose CUDA release the host driver supports (https://pytorch.org/get-started/locally/).
# The CUDA wheels carry their own CUDA libraries, so one slim base serves both builds.
#
# Run it on a git checkout mounted at /workspace, as your own user: `breastdx export` refuses a
# checkpoint without the commit of the code that trained it, and the commit is read with git from
# the checkout (see docs/deployment.md, "Training in a container").
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD":/workspace [--gpus all] breastdx-train \
#       breastdx train training/configs/ultrasound-unet.yaml
FROM python:3.11.15-slim-bookworm

# git: the trainer records `git describe` of the mounted checkout in every checkpoint.
# Not pinned: Debian replaces a stable package's version with each security update and drops the
# old one from the mirror, so a pin breaks the build; the base image tag pins the release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory /workspace

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /workspace
COPY pyproject.toml constraints.txt README.md ./
# torch and torchvision alone from the PyTorch index (versions from constraints.txt), then
# everything else from PyPI; the installed torch already satisfies the pin, so PyPI's build of it
# is never fetched. The package folders are empty here so that a code change reuses this layer.
RUN mkdir breastdx imaging models_registry service training \
    && pip install -c constraints.txt --index-url "$TORCH_INDEX_URL" torch torchvision \
    && pip install -c constraints.txt ".[train]" \
    && pip uninstall -y breastdx

COPY breastdx ./breastdx
COPY imaging ./imaging
COPY models_registry ./models_registry
COPY service ./service
COPY training ./training
# Editable: the import finder points at /workspace, so a checkout mounted over it is the code that
# runs (and the code whose commit lands in the checkpoint); without a mount, the copy above runs.
RUN pip install --no-deps -c constraints.txt -e . && pip check

RUN groupadd --system --gid 10001 breastdx \
    && useradd --system --uid 10001 --gid breastdx --home-dir /var/lib/breastdx --create-home \
        --shell /usr/sbin/nologin breastdx \
    && install -d -m 1777 /cache \
    && chown -R breastdx:breastdx /workspace
# Caches that any uid may write (runs often use --user): torch hub weights, matplotlib, pip.
ENV XDG_CACHE_HOME=/cache TORCH_HOME=/cache/torch MPLCONFIGDIR=/cache/matplotlib
USER 10001:10001
# A training run is a batch job, not a service: no port; the check only proves torch imports.
HEALTHCHECK --interval=5m --timeout=30s --start-period=1m --retries=1 \
    CMD ["python", "-c", "import torch, torchvision"]
CMD ["breastdx", "--help"]
