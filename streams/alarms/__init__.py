"""Alarms: Aodh's threshold and composite model, evaluated while samples stream through.

* :mod:`streams.alarms.model` — definitions and their validation (pure);
* :mod:`streams.alarms.evaluator` — event-time windows and Aodh's rules (pure);
* :mod:`streams.alarms.records` — the ``alarms`` topic's Avro records;
* :mod:`streams.alarms.definitions` — definitions in ZooKeeper, watched;
* :mod:`streams.alarms.stage` — the processor's alarm stage and outputs;
* :mod:`streams.alarms.commands` — ``streams alarm ...``.

See docs/alarms.md.
"""
