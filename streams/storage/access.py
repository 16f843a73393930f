"""The read-only user Grafana connects as, managed on every ``streams schema migrate``.

Not a numbered migration: a password or network list changed in the settings
must take effect the next time ``migrate`` runs, so this step runs every time
and is idempotent (``CREATE USER IF NOT EXISTS`` then ``ALTER USER`` to the
configured password and networks, then ``GRANT SELECT ON <db>.*``). In a cluster
it runs on every node (users are per server unless the servers replicate their
access storage).

=====================  ============================================================
server                 what happens
=====================  ============================================================
>= 20.4, password set  user ``grafana`` created or updated: ``sha256_hash`` of the
                       password (the password itself never reaches the query log),
                       ``HOST IP`` = ``clickhouse.readonly_networks``, ``readonly = 2``,
                       ``SELECT`` on the database only
>= 20.4, no password   not created, with a warning; an existing ``grafana`` user is
                       left as it is (one made by migration 6 before this version has
                       an empty password: set a password, or ``DROP USER grafana``)
18.16 (< 20.4)         no SQL users: the user lives in ``users.xml``. Nothing is
                       changed; ``migrate`` prints the ``users.xml`` entry to install
                       (password as ``password_sha256_hex``, the networks, profile
                       ``readonly``, ``allow_databases``), or the same warning
chdb                   nothing: no users, no network
=====================  ============================================================
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Sequence

from streams.storage.backend import Connection
from streams.storage.dialect import quote_ident

log = logging.getLogger(__name__)

GRAFANA_USER = "grafana"
"""The read-only user Grafana connects as (``deploy/grafana/`` provisions it)."""


def check_networks(networks: Sequence[str]) -> list[str]:
    """Each network as ClickHouse's ``HOST IP`` takes it (an address or CIDR).

    Raises:
        ValueError: an entry is neither (named in the message).
    """
    out = []
    for n in networks:
        try:
            out.append(str(ipaddress.ip_network(n.strip(), strict=False)) if "/" in n else
                       str(ipaddress.ip_address(n.strip())))
        except ValueError:
            raise ValueError(f"{n!r} is not an IP address or CIDR network") from None
    if not out:
        raise ValueError("at least one network is needed (e.g. 127.0.0.1 or 10.0.0.0/8)")
    return out


def readonly_user_sql(database: str, password: str, networks: Sequence[str]) -> list[str]:
    """The statements that create or update the user on a server with SQL users (>= 20.4)."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    hosts = ", ".join(f"IP '{n}'" for n in check_networks(networks))
    ident = f"IDENTIFIED WITH sha256_hash BY '{digest}' HOST {hosts} SETTINGS readonly = 2"
    return [f"CREATE USER IF NOT EXISTS {GRAFANA_USER} {ident}",
            f"ALTER USER {GRAFANA_USER} {ident}",
            f"GRANT SELECT ON {quote_ident(database)}.* TO {GRAFANA_USER}"]


def users_xml_entry(database: str, password: str, networks: Sequence[str]) -> str:
    """The ``<users>`` entry for servers without SQL users (18.16): what ``migrate`` prints."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    ips = "".join(f"<ip>{n}</ip>" for n in check_networks(networks))
    return (f"<{GRAFANA_USER}><password_sha256_hex>{digest}</password_sha256_hex><networks>{ips}</networks>"
            f"<profile>readonly</profile><quota>default</quota>"
            f"<allow_databases><database>{quote_ident(database)}</database></allow_databases></{GRAFANA_USER}>")


def ensure_readonly_user(conns: Sequence[Connection], password: str, networks: Sequence[str]) -> str:
    """Create or update the read-only user on each of ``conns`` (every node of a cluster); return
    a one-line outcome for the CLI. See the module docstring for each server generation.

    Raises:
        ValueError: a network is not an address or CIDR.
        clickhouse_driver.errors.Error: a node refused a statement.
    """
    check_networks(networks)
    conn = conns[0]
    if conn.embedded:
        return f"user {GRAFANA_USER}: chdb has no users (in-process, no network); nothing to do"
    if not conn.version.has_sql_users:
        if not password:
            log.warning("no clickhouse.readonly_password: the %s user is not managed", GRAFANA_USER)
            return (f"user {GRAFANA_USER}: WARNING no clickhouse.readonly_password set; ClickHouse {conn.version} "
                    "keeps users in users.xml, which streams does not change")
        return (f"user {GRAFANA_USER}: ClickHouse {conn.version} has no SQL users; streams cannot set its password "
                f"or networks. Install this in <users> of users.xml on every server:\n"
                f"  {users_xml_entry(conn.database, password, networks)}")
    if not password:
        existing = conn.execute("SELECT count() FROM system.users WHERE name = %(u)s", {"u": GRAFANA_USER})[0][0]
        log.warning("no clickhouse.readonly_password: the %s user is not created", GRAFANA_USER)
        return (f"user {GRAFANA_USER}: WARNING not created, no clickhouse.readonly_password set"
                + ("; an existing one is left as it is (set a password, or DROP USER it)" if existing else ""))
    for c in conns:
        for sql in readonly_user_sql(c.database, password, networks):
            c.execute(sql)
    return (f"user {GRAFANA_USER}: password and networks ({', '.join(check_networks(networks))}) set, "
            f"SELECT on {conn.database}" + (f", on {len(conns)} nodes" if len(conns) > 1 else ""))
