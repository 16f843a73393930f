# syntax=docker/dockerfile:1
# The streams image: one image for every component; the command picks the role
# (poll, process, notify, topics create, schema migrate, ...). Built in two stages so the
# final image holds the installed wheels and nothing used to build them.
#   docker build -t streams:0.1.0 .
#   docker run --rm streams:0.1.0 --help
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Compilers only here, for any dependency without a wheel for this platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Exactly the files the wheel is built from (tests/unit/deploy/test_image.py builds a wheel from them).
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY streams ./streams
# The project's wheel and every dependency's, so the final stage installs offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the chart.
# STREAMS_METRICS_HOST: /metrics, /healthz and /readyz must be reachable from outside the
# container (probes, Prometheus); environment variables rank above the YAML config file.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STREAMS_METRICS_HOST=0.0.0.0
# uid/gid 10001 match the chart's podSecurityContext.
RUN groupadd --system --gid 10001 streams \
    && useradd --system --uid 10001 --gid streams --home-dir /var/lib/streams --create-home \
       --shell /usr/sbin/nologin streams
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels streams-metering
# Relative paths such as the default processor.data_dir (.dev/faust) land in the user's home.
WORKDIR /var/lib/streams
USER 10001:10001
# Ports of poller.metrics_port, processor.metrics_port and notifier.metrics_port.
EXPOSE 9464 9465 9466
# Docker's own health check (Kubernetes uses the chart's probes instead): healthy when the
# /healthz of whichever service runs here answers 200; no curl needed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u\nfor p in (9464, 9465, 9466):\n    try:\n        u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=2); sys.exit(0)\n    except OSError:\n        pass\nsys.exit(1)"]
ENTRYPOINT ["streams"]
CMD ["--help"]
