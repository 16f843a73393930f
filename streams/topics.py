"""Kafka topic administration: topics are created explicitly, never auto-created.

Partition counts are fixed when a topic is created, before any consumer
starts (the number of partitions bounds the processor's parallelism, and
changing it later moves resources between partitions).
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import KafkaSettings

log = logging.getLogger(__name__)


def admin(settings: KafkaSettings) -> AdminClient:
    """An admin client for ``settings``."""
    return AdminClient(settings.client_config())


def pipeline_topics(settings: KafkaSettings) -> list[str]:
    """The topics the pipeline needs: samples, its dead-letter topic, alarms and the notifier's dead letters."""
    return [settings.samples_topic, settings.dlq_topic, settings.alarms_topic, settings.alarms_dlq_topic]


def create_topics(settings: KafkaSettings, names: list[str] | None = None,
                  partitions: int | None = None, timeout: float = 30.0,
                  config: dict[str, str] | None = None) -> dict[str, str]:
    """Create ``names`` (default: :func:`pipeline_topics`) if they do not exist.

    Args:
        partitions: partitions per topic (default ``settings.partitions``).
        config: topic configs, e.g. ``{"cleanup.policy": "compact"}``.

    Returns:
        topic -> ``"created"`` or ``"exists"``.

    Raises:
        KafkaException: the broker refused for another reason or timed out.
    """
    names = names or pipeline_topics(settings)
    client = admin(settings)
    futures = client.create_topics(
        [NewTopic(n, partitions or settings.partitions, settings.replication_factor, config=config or {})
         for n in names],
        request_timeout=timeout,
    )
    result: dict[str, str] = {}
    for name, fut in futures.items():
        try:
            fut.result(timeout)
            result[name] = "created"
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                result[name] = "exists"
            else:
                raise
    return result


def delete_topics(settings: KafkaSettings, names: list[str], timeout: float = 30.0) -> list[str]:
    """Delete ``names`` (benchmarks: the local broker keeps every topic in memory).

    Returns:
        the topics that could not be deleted, with the broker's reason (nothing is raised).
    """
    client = admin(settings)  # kept alive until the deletions are answered
    failed = []
    for name, future in client.delete_topics(names, operation_timeout=timeout).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            failed.append(f"{name}: {exc}")
    return failed


def describe_topics(settings: KafkaSettings, timeout: float = 10.0) -> dict[str, int]:
    """Topic name -> partition count, for every topic on the cluster."""
    md = admin(settings).list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in md.topics.items()}
