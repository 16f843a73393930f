"""Importing streams: clickhouse-driver's date tables are lazy (23 MiB less per process), and correct."""

import os
import subprocess
import sys

PROBE = """
import streams, psutil
from datetime import date, timedelta
before = psutil.Process().memory_info().rss
import clickhouse_driver.columns.datecolumn as d
from clickhouse_driver import Client
grew = psutil.Process().memory_info().rss - before
assert isinstance(d._date_lut, d.LazyLUT) and len(d._date_lut) < 10, len(d._date_lut)
for days in (0, 1, 19_000, 20_819, -25_567, 120_000):  # 1970, 2022, 2027, 1900, 2298
    day = date(1970, 1, 1) + timedelta(days=days)
    assert d._date_lut[days] == day and d._date_lut_reverse[day] == days
print(grew)
"""


def test_importing_streams_makes_clickhouse_drivers_date_tables_lazy_and_they_give_the_same_dates():
    env = {k: v for k, v in os.environ.items() if k != "CLICKHOUSE_DRIVER_LASY_DATE_LUT"}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    grew_mib = int(proc.stdout) / 2**20
    assert grew_mib < 20  # the eager tables alone are about 23 MiB


def test_a_date_table_setting_in_the_environment_is_kept():
    out = subprocess.run([sys.executable, "-c", "import os, streams; print(os.environ['CLICKHOUSE_DRIVER_LASY_DATE_LUT'])"],
                         env={"CLICKHOUSE_DRIVER_LASY_DATE_LUT": "2000-01-01:2000-01-02", "PATH": "/usr/bin"},
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "2000-01-01:2000-01-02", out.stderr
