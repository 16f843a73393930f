"""Alarm notifiers, chosen by the action URL's scheme (as Ceilometer chose publishers).

A :class:`~streams.notifiers.base.Notifier` has one method, ``notify(url,
payload)``. Built-ins: ``http``/``https`` (:class:`~streams.notifiers.rest.RestNotifier`,
Aodh's REST notifier) and ``log`` (:class:`~streams.notifiers.log.LogNotifier`).
Plugins register entry points in the ``streams.notifiers`` group, keyed by scheme.
"""

from __future__ import annotations

from importlib.metadata import entry_points


def available_notifiers() -> dict[str, type]:
    """Notifier classes by URL scheme: built-ins plus ``streams.notifiers`` entry points."""
    from streams.notifiers.log import LogNotifier
    from streams.notifiers.rest import RestNotifier

    found: dict[str, type] = {"http": RestNotifier, "https": RestNotifier, "log": LogNotifier}
    for ep in entry_points(group="streams.notifiers"):
        if ep.name not in found:
            found[ep.name] = ep.load()
    return found
