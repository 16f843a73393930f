"""The dev cluster's generated config (no servers started)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from streams import devenv


def test_cluster_layout_parses_shape_and_names_nodes(tmp_path):
    layout = devenv.ClusterLayout.parse("2x2", zookeeper="127.0.0.1:12181", base_port=30000)
    nodes = layout.nodes(tmp_path)
    assert [n.name for n in nodes] == ["clickhouse-s1r1", "clickhouse-s1r2", "clickhouse-s2r1", "clickhouse-s2r2"]
    assert [(n.port, n.http_port, n.tls_port) for n in nodes][3] == (30030, 30031, 30033)
    for bad in ("2", "0x2", "2x10", "axb"):
        with pytest.raises(devenv.DevEnvError, match="--clickhouse-cluster"):
            devenv.ClusterLayout.parse(bad, zookeeper="127.0.0.1:12181")
    layout.save(tmp_path)
    assert devenv.ClusterLayout.load(tmp_path) == layout


def test_a_node_config_has_remote_servers_macros_zookeeper_and_tls(tmp_path):
    layout = devenv.ClusterLayout(2, 2, zookeeper="127.0.0.1:12181", base_port=30000, zookeeper_root="/x/ch")
    node = layout.nodes(tmp_path)[2]
    node.prepare()
    cfg = ET.parse(node.config_path).getroot()
    shards = cfg.findall("remote_servers/streams/shard")
    assert [[int(r.find("port").text) for r in s.findall("replica")] for s in shards] == [[30000, 30010],
                                                                                         [30020, 30030]]
    assert all(s.find("internal_replication").text == "true" for s in shards)
    assert (cfg.find("macros/shard").text, cfg.find("macros/replica").text) == ("2", "clickhouse-s2r1")
    assert cfg.find("zookeeper/root").text == "/x/ch" and cfg.find("zookeeper/node/port").text == "12181"
    assert cfg.find("tcp_port_secure").text == "30023"
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((node.workdir / "tls" / "server.crt").read_bytes())
    ca = x509.load_pem_x509_certificate(node.ca_file.read_bytes())
    assert cert.issuer == ca.subject
