import math

import pytest

from streams.codec import RejectedMessage
from streams.processor.normalize import Normalizer

NOW_US = 1_795_000_000_000_000


@pytest.mark.parametrize(
    "unit, volume, want_unit, want",
    [
        ("MB", 512.5, "B", 512.5 * 2**20),  # Ceilometer's memory.usage "MB" is MiB
        ("MiB", 1, "B", 2**20),
        ("KiB", 3, "B", 3072),
        ("GB", 2, "B", 2 * 2**30),
        ("ms", 1.5, "ns", 1.5e6),
        ("us", 2, "ns", 2000),
        ("B", 7, "B", 7),
        ("%", 55.5, "%", 55.5),
        ("ns", 10, "ns", 10),
        ("request", 3, "request", 3),
    ],
)
def test_units_are_normalized(sample_factory, unit, volume, want_unit, want):
    s = sample_factory(unit=unit, volume=float(volume), timestamp=NOW_US)
    [out] = Normalizer().normalize([s], now_us=NOW_US)
    assert out["unit"] == want_unit
    assert out["volume"] == pytest.approx(want)


@pytest.mark.parametrize("volume", [math.nan, math.inf, -math.inf])
def test_non_finite_volume_is_rejected(sample_factory, volume):
    with pytest.raises(RejectedMessage) as err:
        Normalizer().normalize([sample_factory(volume=volume, timestamp=NOW_US)], now_us=NOW_US)
    assert (err.value.stage, err.value.reason) == ("normalize", "non_finite_volume")


@pytest.mark.parametrize("ts", [0, -5, NOW_US + 3601 * 1_000_000])
def test_out_of_range_timestamps_are_rejected(sample_factory, ts):
    with pytest.raises(RejectedMessage) as err:
        Normalizer(max_future_skew=3600).normalize([sample_factory(timestamp=ts)], now_us=NOW_US)
    assert err.value.reason == "bad_timestamp"


def test_small_future_skew_is_accepted(sample_factory):
    s = sample_factory(timestamp=NOW_US + 10_000_000)
    assert Normalizer(max_future_skew=60).normalize([s], now_us=NOW_US) == [s]


@pytest.mark.parametrize("field", ["message_id", "name", "resource_id"])
def test_required_fields_must_be_non_empty(sample_factory, field):
    with pytest.raises(RejectedMessage) as err:
        Normalizer().normalize([sample_factory(**{field: "", "timestamp": NOW_US})], now_us=NOW_US)
    assert err.value.reason == "empty_field"


def test_empty_batch_is_rejected():
    with pytest.raises(RejectedMessage, match="empty_batch"):
        Normalizer().normalize([], now_us=NOW_US)


def test_one_bad_sample_rejects_the_record(sample_factory):
    good, bad = sample_factory(timestamp=NOW_US), sample_factory(volume=math.nan, timestamp=NOW_US)
    with pytest.raises(RejectedMessage):
        Normalizer().normalize([good, bad], now_us=NOW_US)
