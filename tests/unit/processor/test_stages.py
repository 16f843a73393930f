import math

from streams.processor.normalize import Normalizer
from streams.processor.stages import RecordProcessor, dlq_headers


def test_every_record_is_either_accepted_or_rejected_with_its_index(codec, sample_factory):
    good1 = codec.encode([sample_factory(), sample_factory()])
    tampered = bytearray(codec.encode([sample_factory()]))
    tampered[20] ^= 0xFF
    nan = codec.encode([sample_factory(volume=math.nan)])
    good2 = codec.encode([sample_factory(unit="MiB", volume=1.0)])
    values = [good1, bytes(tampered), b"garbage", None, nan, good2]

    samples, rejected = RecordProcessor(codec, Normalizer()).process(values)

    assert len(samples) == 3
    assert samples[-1]["unit"] == "B" and samples[-1]["volume"] == 2**20
    assert [(r.index, r.error.stage, r.error.reason) for r in rejected] == [
        (1, "verify", "bad_signature"),
        (2, "decode", "not_single_object"),
        (3, "decode", "empty"),
        (4, "normalize", "non_finite_volume"),
    ]


def test_dlq_headers_name_stage_reason_and_origin(codec):
    from streams.codec import RejectedMessage

    h = dict(dlq_headers(RejectedMessage("verify", "bad_signature", "x" * 5000), "samples", 3, 42))
    assert h["streams.dlq.stage"] == b"verify"
    assert h["streams.dlq.reason"] == b"bad_signature"
    assert h["streams.dlq.topic"] == b"samples"
    assert h["streams.dlq.partition"] == b"3"
    assert h["streams.dlq.offset"] == b"42"
    assert 512 <= len(h["streams.dlq.detail"]) <= 1024 and h["streams.dlq.detail"].endswith(b"chars)")
