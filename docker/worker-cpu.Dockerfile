# syntax=docker/dockerfile:1
# breastdx queue worker on CPU: the same torch-free serving set as the API image (".[serve]",
# ONNX Runtime on CPU), running `breastdx worker` on the three stage queues.
# Build from the repository root:  docker build -f docker/worker-cpu.Dockerfile -t breastdx-worker .
# Keep the build stage in step with api.Dockerfile (same base, same serving set).

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
LABEL org.opencontainers.image.title="breastdx-worker" \
      org.opencontainers.image.description="breastdx RQ worker, ONNX Runtime on CPU. Not for clinical use." \
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
# RQ: the first SIGTERM is a warm shutdown (finish the current job, take no new one), a second one
# is a cold shutdown. Give `docker stop` time for the longest job (compose: stop_grace_period).
STOPSIGNAL SIGTERM
# Healthy while Redis answers and this container's worker is registered with a live heartbeat.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["breastdx-healthcheck", "worker"]
# Refuses placeholder secrets ("changethis") in the environment, then runs CMD.
ENTRYPOINT ["breastdx-entrypoint"]
CMD ["breastdx", "worker", "--queues", "mammography", "ultrasound", "histopathology"]
