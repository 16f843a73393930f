"""``streams coordination secure`` and ``streams hooks set | show``: znodes written with the project's ACL.

Both connect with the ``coordination.*`` settings, so what they write gets the
digest ACL of ``coordination.username`` (see :mod:`streams.coordination.security`).
Writing the hooks document with zkCli instead would give it ZooKeeper's open ACL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click
import yaml
from kazoo.client import KazooClient


def _settings():
    return click.get_current_context().find_root().obj.settings.coordination


@contextlib.contextmanager
def _client(settings) -> Iterator[KazooClient]:
    from streams.coordination import connect

    if not settings.hosts:
        raise click.ClickException("coordination.hosts is not set")
    client = connect(settings)
    try:
        yield client
    finally:
        client.stop()
        client.close()


@click.group()
def coordination() -> None:
    """ZooKeeper: access control of the project's znodes."""


@coordination.command("secure")
def coordination_secure() -> None:
    """Give coordination.root and every znode below it the digest ACL of coordination.username.

    For znodes created before credentials were set (they are open to everyone).
    Idempotent; clients without the credentials lose access, so give every
    service the credentials first. Exits 1 if some znode refused the change.
    """
    from streams.coordination.security import secure_tree

    s = _settings()
    if not s.username:
        raise click.ClickException("coordination.username and coordination.password are not set: "
                                   "there is no identity to secure the znodes for")
    with _client(s) as client:
        report = secure_tree(client, s)
    for path in report.changed:
        click.echo(f"secured {path}")
    click.echo(f"{len(report.changed)} znodes secured, {report.unchanged} already had the ACL of "
               f"{s.username!r} under {s.root}")
    if report.denied:
        raise click.ClickException(f"{len(report.denied)} znodes refused {s.username!r} (owned by another "
                                   f"identity): {', '.join(report.denied[:10])}")


@click.group()
def hooks() -> None:
    """Edge hooks of the polling agents (<coordination.root>/hooks in ZooKeeper)."""


@hooks.command("set")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def hooks_set(file: str) -> None:
    """Validate the YAML/JSON hooks document FILE and store it; running agents apply it within seconds."""
    from kazoo.exceptions import NodeExistsError

    from streams.pollers.hooks import HookChain

    raw = Path(file).read_bytes()
    try:
        HookChain.build(yaml.safe_load(raw))
    except (ValueError, yaml.YAMLError) as exc:
        raise click.ClickException(f"{file}: invalid hooks document: {exc}") from None
    s = _settings()
    path = f"{s.root}/hooks"
    with _client(s) as client:
        try:
            client.create(path, raw, makepath=True)
        except NodeExistsError:
            client.set(path, raw)
    click.echo(f"stored {path} ({len(raw)} bytes)")


@hooks.command("show")
def hooks_show() -> None:
    """Print the hooks document in force (nothing if there is none)."""
    from kazoo.exceptions import NoNodeError

    s = _settings()
    with _client(s) as client:
        try:
            data, _ = client.get(f"{s.root}/hooks")
        except NoNodeError:
            return
    click.echo(data.decode(errors="replace"))
