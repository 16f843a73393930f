"""Who may touch the project's znodes: digest authentication, ACLs and TLS for every kazoo client.

Every kazoo client of the project is built by :func:`new_client` (through
:func:`streams.coordination.connect` or
:class:`~streams.coordination.session.ZooKeeperSession`), so one set of
settings (``coordination.*``) governs them all:

* ``username`` / ``password`` set: the client authenticates with ZooKeeper's
  ``digest`` scheme (``auth_data``), and every znode it creates (alarms, hooks,
  groups, services, locks, parents made by ``makepath``) gets kazoo's
  ``default_acl``: all permissions for that identity, nothing for anyone else
  (``make_digest_acl``). Without them, znodes get ZooKeeper's open
  ``world:anyone`` ACL, as before.
* ``use_ssl``: TLS to ZooKeeper's ``secureClientPort``, with the server's
  certificate and host name verified against ``ca_file`` (or the system CAs);
  ``cert_file`` / ``key_file`` give a client certificate for ``ssl.clientAuth=need``.

ZooKeeper's digest authentication never fails by itself: a wrong password is
simply another identity, refused (``NoAuth``) by each znode's ACL. So
:func:`check_access` reads ``coordination.root`` right after connecting and
turns a refusal into a :class:`CoordinationAccessError` naming the user (never
the password). :func:`secure_tree` gives znodes created before the ACLs were
turned on (world-open) the digest ACL, recursively (``streams coordination secure``).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.hosts import collect_hosts
from kazoo.security import ACL, make_digest_acl

from streams.config import CoordinationSettings

log = logging.getLogger(__name__)


class CoordinationError(RuntimeError):
    """ZooKeeper cannot be used with these settings: unreachable, TLS refused, or a TLS file missing."""


class CoordinationAccessError(CoordinationError):
    """ZooKeeper refused this identity (or no identity) access to ``coordination.root``."""


def digest_acl(settings: CoordinationSettings) -> list[ACL] | None:
    """The ACL every project znode gets: all permissions for ``username`` alone; None without credentials."""
    if not settings.username:
        return None
    return [make_digest_acl(settings.username, settings.password.get_secret_value(), all=True)]


def client_options(settings: CoordinationSettings) -> dict[str, Any]:
    """KazooClient keyword arguments for authentication, default ACL and TLS (empty when none are set).

    Raises:
        CoordinationError: a TLS file named in the settings does not exist.
    """
    opts: dict[str, Any] = {}
    if settings.username:
        opts["auth_data"] = [("digest", f"{settings.username}:{settings.password.get_secret_value()}")]
        opts["default_acl"] = digest_acl(settings)
    if settings.use_ssl:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(settings, key)
            if path and not os.path.isfile(path):
                raise CoordinationError(f"coordination.{key}: {path}: no such file")
        # Verification is not optional: kazoo's check_hostname defaults to off, so turn it on.
        opts.update(use_ssl=True, verify_certs=True, check_hostname=True, ca=settings.ca_file,
                    certfile=settings.cert_file, keyfile=settings.key_file)
    return opts


def new_client(settings: CoordinationSettings, **kwargs: Any) -> KazooClient:
    """A (not started) KazooClient for ``settings.hosts`` with the security options of :func:`client_options`.

    ``kwargs`` are passed on (retry policies...). Raises ValueError when ``hosts`` is unset,
    :class:`CoordinationError` as :func:`client_options`.
    """
    if not settings.hosts:
        raise ValueError("coordination.hosts is not set")
    return KazooClient(hosts=settings.hosts, timeout=settings.session_timeout,
                       **{**client_options(settings), **kwargs})


def denied_message(settings: CoordinationSettings, path: str) -> str:
    """Why ZooKeeper refused ``path``, naming the user (never the password) and the settings to check."""
    if settings.username:
        return (f"ZooKeeper {settings.hosts} denied user {settings.username!r} access to {path}: "
                f"wrong coordination.password, or the znodes there belong to another identity")
    return (f"ZooKeeper {settings.hosts} denied access to {path}: its znodes have an ACL; set "
            f"coordination.username and coordination.password (STREAMS_COORDINATION__USERNAME / __PASSWORD)")


def check_access(client: KazooClient, settings: CoordinationSettings) -> None:
    """Read ``settings.root`` with a started ``client``; a root that does not exist yet passes.

    Logs a warning when credentials are set but the root is still world-open
    (run ``streams coordination secure``).

    Raises:
        CoordinationAccessError: the root's ACL refuses this identity.
    """
    try:
        client.get_children(settings.root)
        acls, _ = client.get_acls(settings.root)
    except NoNodeError:
        return
    except NoAuthError:
        raise CoordinationAccessError(denied_message(settings, settings.root)) from None
    if settings.username and any(a.id.scheme == "world" for a in acls):
        log.warning("%s is open to everyone (world ACL) although coordination.username is set: run "
                    "`streams coordination secure` to give existing znodes the digest ACL", settings.root)


def tls_problem(settings: CoordinationSettings, timeout: float = 5.0) -> str | None:
    """Try a verified TLS handshake with the first ZooKeeper host, as kazoo would; the failure, or None.

    kazoo retries a failed handshake until its connect timeout and then reports
    only a time-out; this names the reason (e.g. ``CERTIFICATE_VERIFY_FAILED``).
    """
    hosts, _chroot = collect_hosts(settings.hosts or "")
    if not settings.use_ssl or not hosts:
        return None
    host, port = hosts[0]
    ctx = ssl.create_default_context(cafile=settings.ca_file)
    if settings.cert_file:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                ctx.wrap_socket(sock, server_hostname=host):
            pass
    except ssl.SSLError as exc:
        return f"TLS handshake with {host}:{port} failed: {exc}"
    except OSError as exc:
        return f"{host}:{port}: {exc}"
    return None


@dataclass
class SecureReport:
    """What :func:`secure_tree` did: znodes given the ACL, znodes that had it, znodes it may not change."""

    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    denied: list[str] = field(default_factory=list)


def _child(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


def secure_tree(client: KazooClient, settings: CoordinationSettings) -> SecureReport:
    """Give ``settings.root`` and every znode below it the digest ACL of ``settings.username``.

    Idempotent: a znode that already has exactly that ACL is left alone. The
    root is created (with the ACL) if absent. Znodes that vanish meanwhile
    are skipped; znodes whose ACL refuses this identity are reported in
    ``denied`` (someone else owns them). ZooKeeper's own ``/zookeeper`` is never touched.

    Raises:
        ValueError: no ``coordination.username``: there is no identity to secure for.
    """
    acl = digest_acl(settings)
    if acl is None:
        raise ValueError("coordination.username and coordination.password are not set: no identity to secure for")
    report = SecureReport()
    client.ensure_path(settings.root)
    stack = [settings.root]
    while stack:
        path = stack.pop()
        try:
            current, _ = client.get_acls(path)
            if set(current) != set(acl):
                client.set_acls(path, acl)
                report.changed.append(path)
            else:
                report.unchanged += 1
            stack.extend(_child(path, c) for c in client.get_children(path) if _child(path, c) != "/zookeeper")
        except NoNodeError:
            continue
        except NoAuthError:
            report.denied.append(path)
    return report
