#!/usr/bin/env python3
"""Publish samples or events through Ceilometer's own publisher, as its pipeline does.

Runs with the Python of ``.venv-ceilometer`` (ceilometer 27 and
``oslo.messaging[kafka]``, built by ``make ceilometer-venv``), not with the
project's: it imports Ceilometer and nothing of ``streams``. The publisher is
loaded exactly as ``tests/data/ceilometer/capture.py`` loads it:
``ceilometer.publisher.get_publisher(conf, url, namespace)`` with a
``ceilometer.conf`` passed to ``ceilometer.service.prepare_service``, then
``publish_samples`` / ``publish_events`` once per batch of the input.

Input (``--input FILE``, JSON): a list of batches; a batch is a list of
samples (the keyword arguments of ``ceilometer.sample.Sample``) or of events
(``message_id``, ``event_type``, ``generated`` ISO text, ``traits`` as
``[name, dtype, value]`` with datetime values as ISO text, ``raw``).
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

from ceilometer import publisher, sample, service
from ceilometer.event import models

CONF = """[DEFAULT]
host = ceilo-test-node
transport_url = kafka://{bootstrap}

[publisher]
telemetry_secret = {secret}
"""


def _datetime(text):
    return datetime.datetime.fromisoformat(text)


def make_event(e):
    traits = [models.Trait(n, t, _datetime(v) if t == models.Trait.DATETIME_TYPE else v) for n, t, v in e["traits"]]
    return models.Event(e["message_id"], e["event_type"], _datetime(e["generated"]), traits, e.get("raw", {}))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--url", required=True, help="publisher URL, e.g. notifier://h:p?driver=kafka&topic=metering")
    ap.add_argument("--kind", choices=("samples", "events"), default="samples")
    ap.add_argument("--input", required=True)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between batches")
    args = ap.parse_args()

    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(CONF.format(bootstrap=args.bootstrap, secret=args.secret))
    try:
        conf = service.prepare_service(argv=["ceilometer-publish"], config_files=[f.name])
    finally:
        os.unlink(f.name)
    namespace = "ceilometer.sample.publisher" if args.kind == "samples" else "ceilometer.event.publisher"
    pub = publisher.get_publisher(conf, args.url, namespace)
    with open(args.input, encoding="utf-8") as fh:
        batches = json.load(fh)
    for i, batch in enumerate(batches):
        if args.kind == "samples":
            pub.publish_samples([sample.Sample(**s) for s in batch])
        else:
            pub.publish_events([make_event(e) for e in batch])
        if args.pause and i + 1 < len(batches):
            time.sleep(args.pause)
    pub.notifier.transport.cleanup()  # the Kafka driver produces asynchronously; this flushes it
    print(f"published {sum(len(b) for b in batches)} {args.kind} in {len(batches)} calls", file=sys.stderr)


if __name__ == "__main__":
    main()
