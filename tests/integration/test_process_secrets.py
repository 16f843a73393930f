"""No secrets in samples: a real process with credentials in its command line, polled by the real agent;
its samples, read back from Kafka, carry the executable's name (default) or the redacted command line."""

from __future__ import annotations

import subprocess
import sys
import uuid

import psutil

from tests.integration.conftest import wait_for


def test_process_samples_in_kafka_never_carry_its_command_line_secrets(pipeline):
    tag = uuid.uuid4().hex[:12]
    secrets = [f"hunter2-{tag}", f"tok_live_{tag}", f"s3cr3t{tag}"]
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", f"--db-password={secrets[0]}",
                               "--api-token", secrets[1], f"postgres://bot:{secrets[2]}@db:5432/app", f"--tag={tag}"])
    try:
        wait_for(lambda: secrets[0] in " ".join(psutil.Process(victim.pid).cmdline()), 10, "the victim's argv")
        polling = pipeline.tmp / "procs.yaml"
        polling.write_text("sources:\n  - name: procs\n    interval: 5\n    meters: [memory.usage]\n"
                           "    pollsters: {processes: {}}\n"
                           "    discovery_params: {local_processes: {limit: 100000}}\n")
        records = 0
        for mode in ("name", "full"):
            out = subprocess.run([sys.executable, "-m", "streams.cli", "poll", "--once", "--polling", str(polling)],
                                 env={**pipeline.env, "STREAMS_POLLER__PROCESS_CMDLINE": mode},
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr[-2000:]
            records += int(out.stdout.split(" in ")[1].split()[0])  # "published N samples in R records; ..."

        messages = pipeline.consume(pipeline.settings.kafka.samples_topic, records, timeout=60)
        assert len(messages) == records
        for m in messages:
            for secret in secrets:
                assert secret.encode() not in m.value() and secret.encode() not in (m.key() or b"")
        codec = pipeline.codec()
        mine = [s for m in messages for s in codec.decode(m.value())
                if s["resource_id"].split("/process/")[-1].startswith(f"{victim.pid}-")]
        assert sorted(s["resource_metadata"]["cmdline"] for s in mine) == sorted([
            psutil.Process(victim.pid).name(),
            f"{sys.executable} -c import time; time.sleep(300) --db-password=*** --api-token *** "
            f"postgres://bot:***@db:5432/app --tag={tag}",
        ])
    finally:
        victim.kill()
        victim.wait(10)
