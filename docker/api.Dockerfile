# syntax=docker/dockerfile:1
# breastdx API and DICOM listener: the torch-free serving set (".[serve]": FastAPI, RQ, pynetdicom,
# highdicom, ONNX Runtime on CPU). One image, two commands:
#   breastdx serve --host 0.0.0.0 --port 8000                (the default command)
#   breastdx dicom-listener --host 0.0.0.0 --port 11112      (compose service dicom-listener)
# Build from the repository root:  docker build -f docker/api.Dockerfile -t breastdx-api .
# Keep the build stage in step with worker-cpu.Dockerfile (same base, same serving set).

# ---- build: a virtual environment in /opt/venv; pip, wheels and sources stay behind -------------
FROM python:3.11.15-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from the project metadata alone (empty package folders), so that a change to
# the code reuses this layer. Every version comes from constraints.txt, as in make serve and CI.
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir breastdx imaging models_registry service \
    && pip install -c constraints.txt ".[serve]" \
    && pip uninstall -y breastdx
COPY breastdx ./breastdx
COPY imaging ./imaging
COPY models_registry ./models_registry
COPY service ./service
RUN pip install --no-deps -c constraints.txt . && pip check

# ---- runtime -------------------------------------------------------------------------------
FROM python:3.11.15-slim-bookworm
LABEL org.opencontainers.image.title="breastdx-api" \
      org.opencontainers.image.description="breastdx HTTP API and DICOM listener (torch-free, CPU). Not for clinical use." \
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
COPY --from=build /opt/venv /opt/venv
# The shipped models seed /models: Docker copies them into a new, empty named volume mounted
# there (a bind mount is not seeded; docs/deployment.md). They stay in site-packages as well.
COPY --from=build --chown=10001:10001 /src/models_registry/store /models
USER 10001:10001
WORKDIR /var/lib/breastdx
EXPOSE 8000 11112
# Liveness only (/healthz): /readyz turns 503 while no model is registered, which must not make
# the container unhealthy. The dicom-listener service overrides this with a C-ECHO check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["breastdx-healthcheck", "http"]
# Refuses placeholder secrets ("changethis") in the environment, then runs CMD.
ENTRYPOINT ["breastdx-entrypoint"]
CMD ["breastdx", "serve", "--host", "0.0.0.0", "--port", "8000"]
