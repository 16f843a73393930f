"""``streams api``: Aodh's v2 REST API over this pipeline's alarms, for python-aodhclient, Heat and Horizon.

* :mod:`streams.api.mapping` — Aodh documents <-> alarm definitions (pure);
* :mod:`streams.api.query` — Aodh's simple and complex queries (pure);
* :mod:`streams.api.history` — alarm states and history from ClickHouse ``alarm_history``;
* :mod:`streams.api.store` — definitions in ZooKeeper, as ``streams alarm`` and the processor see them;
* :mod:`streams.api.auth` — ``api.auth``: token, keystone, noauth;
* :mod:`streams.api.app` — the aiohttp handlers; :mod:`streams.api.service` — the mode service;
* :mod:`streams.api.commands` — the ``streams api`` command.

See the README ("Aodh API") and docs/alarms.md.
"""
