# syntax=docker/dockerfile:1
# breastdx queue worker on an NVIDIA GPU: ".[gpu]" (onnxruntime-gpu in place of onnxruntime) on a
# CUDA runtime base with cuDNN. Falls back to the CPU provider where CUDA cannot start (see
# service/inference/runner.py), so a wrong host still serves, only slowly.
# Build from the repository root:  docker build -f docker/worker-gpu.Dockerfile -t breastdx-worker-gpu .
#
# Versions that must move together:
# - onnxruntime-gpu from PyPI is built for CUDA 13 and cuDNN 9 (its `cuda` extra asks for
#   nvidia-cuda-runtime~=13.0, `cudnn` for nvidia-cudnn-cu13~=9.0); the base image provides both,
#   so those pip extras are not installed. Pin onnxruntime-gpu in constraints.txt and move this
#   base to the CUDA major that the pinned release names.
# - CUDA 13 needs an NVIDIA driver >= 580 on the host (and the NVIDIA Container Toolkit).
# - Ubuntu 22.04 ships Python 3.10 only (its python3.11 is a release candidate), so Python 3.11
#   comes as a python-build-standalone build installed by uv; the pinned uv release fixes which
#   builds exist, the version below picks one (the same patch release as the slim images).

FROM ghcr.io/astral-sh/uv:0.13.0@sha256:cdc6093146eb3ff6a40107b38f008b789e050e77ad87865e381d9917da55a168 AS uv

# ---- build: Python in /opt/python, a virtual environment in /opt/venv -----------------------
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu22.04 AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_MANAGED_PYTHON=1 UV_NO_CACHE=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN uv venv --seed --python 3.11.15 /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from the project metadata alone (empty package folders), so that a change to
# the code reuses this layer. Every version comes from constraints.txt, as in make serve and CI.
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir breastdx imaging models_registry service \
    && pip install -c constraints.txt ".[gpu]" \
    && pip uninstall -y breastdx
COPY breastdx ./breastdx
COPY imaging ./imaging
COPY models_registry ./models_registry
COPY service ./service
RUN pip install --no-deps -c constraints.txt . && pip check

# ---- runtime: the same CUDA base without uv; Python and the venv at the paths they were built at --
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu22.04
LABEL org.opencontainers.image.title="breastdx-worker-gpu" \
      org.opencontainers.image.description="breastdx RQ worker, ONNX Runtime with the CUDA provider. Not for clinical use." \
      org.opencontainers.image.licenses="Apache-2.0"
# The model store and the DICOM spool (dedupe state, dead letters): compose mounts volumes there.
ENV PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    BREASTDX_MODEL_STORE=/models \
    BREASTDX_DICOM_SPOOL_DIR=/var/lib/breastdx/spool
# The entrypoint refuses placeholder secrets; the health checks are docker/healthcheck.sh.
# (chmod in a RUN, not COPY --chmod, so that the legacy builder of Compose v1 builds this too.)
COPY docker/entrypoint.sh /usr/local/bin/breastdx-entrypoint
COPY docker/healthcheck.sh /usr/local/bin/breastdx-healthcheck
# A fixed numeric uid/gid (10001) so that volume ownership and Kubernetes' runAsNonRoot can be
# checked; /models and the spool are created owned by it, so new named volumes mounted there are
# writable by it (Docker copies a mount point's ownership and content into an empty named volume).
RUN chmod 0755 /usr/local/bin/breastdx-entrypoint /usr/local/bin/breastdx-healthcheck \
    && groupadd --system --gid 10001 breastdx \
    && useradd --system --uid 10001 --gid breastdx --home-dir /var/lib/breastdx --create-home \
        --shell /usr/sbin/nologin breastdx \
    && install -d -o breastdx -g breastdx /models /var/lib/breastdx/spool
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
# The shipped models seed /models: Docker copies them into a new, empty named volume mounted
# there (a bind mount is not seeded; docs/deployment.md). They stay in site-packages as well.
COPY --from=build --chown=10001:10001 /src/models_registry/store /models
USER 10001:10001
WORKDIR /var/lib/breastdx
# RQ: the first SIGTERM is a warm shutdown (finish the current job, take no new one).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["breastdx-healthcheck", "worker"]
# Refuses placeholder secrets ("changethis") in the environment, then runs CMD.
ENTRYPOINT ["breastdx-entrypoint"]
CMD ["breastdx", "worker", "--queues", "mammography", "ultrasound", "histopathology"]
