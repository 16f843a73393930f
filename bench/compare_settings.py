"""The processor run of ``make bench``, side by side for settings overrides: samples/s and peak RSS.

Pre-loads one topic with ``--samples`` signed samples (as ``bench/run.py`` does), then runs
``streams process`` over it once per variant and round, alternating, each with its own consumer group
and ClickHouse database. Variants are JSON: a label for each, with its ``STREAMS_*`` overrides.

Usage (needs ``streams dev up``)::

    python bench/compare_settings.py --samples 840000 --rounds 2 \\
        '{"batch 10000": {"STREAMS_PROCESSOR__BATCH_SIZE": "10000"}, "shipped": {}}'

Prints one line per run; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import run as bench  # noqa: E402

from streams import devenv  # noqa: E402
from streams.codec import BatchCodec  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.publisher import KafkaPublisher  # noqa: E402
from streams.topics import create_topics, delete_topics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", help='JSON: {"label": {"STREAMS_...": "value"}, ...}')
    ap.add_argument("--samples", type=int, default=840_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    variants = json.loads(args.variants)
    services = devenv.up()
    name = f"cmp{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "BENCH_NAME": name, "STREAMS_KAFKA__BOOTSTRAP_SERVERS": services["kafka"],
           "STREAMS_KAFKA__SAMPLES_TOPIC": f"{name}.samples", "STREAMS_KAFKA__DLQ_TOPIC": f"{name}.samples.dlq",
           "STREAMS_SIGNING__KEYS": json.dumps(bench.KEYS), "STREAMS_LOG_LEVEL": "WARNING",
           "STREAMS_PROCESSOR__PIPELINE": str(ROOT / "bench" / "pipeline.yaml")}
    env.pop("STREAMS_CONFIG", None)
    os.environ.update({k: v for k, v in env.items() if k.startswith("STREAMS_")})
    settings = load_settings()
    create_topics(settings.kafka, config={"retention.ms": str(7 * 86_400_000)})
    try:
        pub = KafkaPublisher(settings.kafka, BatchCodec(settings.signing.keyring()))
        for record in bench.make_samples(args.samples // bench.PER_RECORD):
            pub.publish(record)
        pub.flush(120)
        for rnd in range(args.rounds):
            for label, overrides in variants.items():
                v = bench.Variant({**env, **overrides}, services, f"v{len(label)}{rnd}{uuid.uuid4().hex[:4]}")
                try:
                    r = bench.run_processor(v, pub.delivered)
                finally:
                    v.drop()
                print(f"{label:<20} round {rnd + 1}: {r['samples_per_s']:>7,} samples/s, "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    finally:
        for failure in delete_topics(settings.kafka, [settings.kafka.samples_topic, settings.kafka.dlq_topic]):
            print(f"could not delete a topic: {failure}", file=sys.stderr)


if __name__ == "__main__":
    main()
