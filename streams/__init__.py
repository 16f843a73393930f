"""streams: Kafka-native metering and alarming (a successor to Ceilometer, Aodh and Gnocchi).

Importing the package asks clickhouse-driver, imported after it, for its lazy date tables: by
default clickhouse-driver fills two dicts with every date from 1900 to 2299 when it is imported
(146,097 entries each, about 23 MiB per process). The lazy tables compute a date when a Date
column first needs it (``CLICKHOUSE_DRIVER_LASY_DATE_LUT``, sic, clickhouse-driver >= 0.2.7:
``start:end`` is the range computed up front). A value already in the environment is kept.
"""

import os

os.environ.setdefault("CLICKHOUSE_DRIVER_LASY_DATE_LUT", "1970-01-01:1970-01-01")
