# syntax=docker/dockerfile:1
# The streams image: one image for every component; the command picks the role
# (poll, process, notify, wait, topics create, schema migrate, check, ...).
#   docker build -t streams:0.1.0 --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%FT%TZ) .
#   docker run --rm streams:0.1.0 --help
#
# Reproducible: the base image is pinned by digest (the multi-platform index of
# python:3.11-slim-bookworm; refresh it with `docker buildx imagetools inspect python:3.11-slim-bookworm`),
# and every Python package comes from requirements.lock, pinned with hashes (`make image-lock`, uv).
# Two stages: the final image holds the virtualenv and tini, and nothing used to build them.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:b18992999dbe963a45a8a4da40ac2b1975be1a776d939d098c647482bcad5cba

FROM ${PYTHON_IMAGE} AS builder
# Compilers for any dependency without a wheel for this platform; tini (statically linked) for the final stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential tini \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python -m venv /opt/streams
# Dependencies first (their layer survives code changes): exactly the locked versions and
# hashes, nothing resolved at build time (--no-deps: the lock is complete).
COPY requirements.lock ./
RUN /opt/streams/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
# Exactly the files the wheel is built from (tests/unit/deploy/test_image.py builds a wheel from them),
# with the locked setuptools (no build isolation: nothing fetched).
COPY pyproject.toml README.md LICENSE ./
COPY schemas ./schemas
COPY streams ./streams
RUN /opt/streams/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/streams/bin/pip check

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="streams" \
      org.opencontainers.image.description="Metering and alarming on Kafka, Faust and ClickHouse: pollers, processor, notifier, Aodh API, Ceilometer bridge" \
      org.opencontainers.image.source="https://github.com/streams-metering/streams" \
      org.opencontainers.image.url="https://github.com/streams-metering/streams" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the chart.
# STREAMS_METRICS_HOST: /metrics, /healthz and /readyz must be reachable from outside the
# container (probes, Prometheus); environment variables rank above the YAML config file.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/streams/bin:$PATH \
    STREAMS_METRICS_HOST=0.0.0.0
# uid/gid 10001 match the chart's podSecurityContext.
RUN groupadd --system --gid 10001 streams \
    && useradd --system --uid 10001 --gid streams --home-dir /var/lib/streams --create-home \
       --shell /usr/sbin/nologin streams
COPY --from=builder /usr/bin/tini-static /usr/bin/tini
COPY --from=builder /opt/streams /opt/streams
# Relative paths such as the default processor.data_dir (.dev/faust) land in the user's home.
WORKDIR /var/lib/streams
USER 10001:10001
# Ports of poller.metrics_port, processor.metrics_port, notifier.metrics_port, api.metrics_port,
# ceilometer.metrics_port, and api.port (the Aodh API).
EXPOSE 9464 9465 9466 9467 9468 8042
# Docker's own health check (Kubernetes uses the chart's probes instead): healthy when the
# /healthz of whichever service runs here answers 200; no curl needed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u\nfor p in (9464, 9465, 9466, 9467, 9468):\n    try:\n        u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=2); sys.exit(0)\n    except OSError:\n        pass\nsys.exit(1)"]
# tini is PID 1: it forwards SIGTERM to streams (a clean stop flushes what the service holds) and
# reaps zombies; -s makes it a subreaper where it is not PID 1 (the compute agent's hostPID).
ENTRYPOINT ["/usr/bin/tini", "-s", "--", "streams"]
CMD ["--help"]
