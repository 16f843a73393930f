"""Bridges from other telemetry systems: ``streams bridge ceilometer`` (OpenStack Ceilometer over Kafka).

``ceilometer.py`` (envelope, normalization), ``signing.py`` (Ceilometer's
signature), ``meters.py`` (meters.yaml: samples from events), ``events.py``
(the events table), ``batch.py`` (one batch, pure), ``service.py`` (the
mode service), ``commands.py`` (the CLI).
"""
