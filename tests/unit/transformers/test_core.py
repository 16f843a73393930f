import pytest

from streams.transformers import core
from streams.transformers.base import TransformerConfigError, TransformError, derived_id
from streams.transformers.core import (
    Accumulator,
    Aggregator,
    Arithmetic,
    Delta,
    RateOfChange,
    UnitConversion,
)
from tests.conftest import make_test_sample

S = 1_000_000  # microseconds per second


def cpu(ts_s: float, ns: float, mono: float | None = None, **kw):
    return make_test_sample(name="cpu", type="cumulative", unit="ns", volume=float(ns),
                            timestamp=int(ts_s * S), monotonic_time=mono,
                            resource_metadata={"cpu_number": "2"}, **kw)


CPU_UTIL = {"target": {"name": "cpu_util", "unit": "%", "type": "gauge", "max": 100,
                       "scale": "100.0 / (1e9 * resource_metadata.cpu_number)"}}


# ---------------------------------------------------------------- rate_of_change
def test_rate_first_sample_yields_nothing_then_rates():
    t, state = RateOfChange("s/0", CPU_UTIL), {}
    assert t.handle(cpu(100, 0), state) == []
    [out] = t.handle(cpu(110, 10e9), state)  # 1 core-second per second on 2 cores
    assert (out["name"], out["unit"], out["type"]) == ("cpu_util", "%", "gauge")
    assert out["volume"] == pytest.approx(50.0)
    assert out["timestamp"] == 110 * S and out["resource_id"] == "host-a"


def test_rate_uses_monotonic_time_when_present():
    t, state = RateOfChange("s/0", CPU_UTIL), {}
    t.handle(cpu(100, 0, mono=5.0), state)
    # wall clock jumped 100 s, monotonic says 10 s passed
    [out] = t.handle(cpu(200, 10e9, mono=15.0), state)
    assert out["volume"] == pytest.approx(50.0)


def test_rate_counter_reset_counts_from_zero_never_negative():
    t, state = RateOfChange("s/0", CPU_UTIL), {}
    t.handle(cpu(100, 50e9), state)
    [out] = t.handle(cpu(110, 2e9), state)  # dropped: process restarted
    assert out["volume"] == pytest.approx(2e9 / 10 * 100 / 2e9)
    assert out["volume"] >= 0


def test_rate_is_clamped_to_max():
    t, state = RateOfChange("s/0", CPU_UTIL), {}
    t.handle(cpu(100, 0), state)
    [out] = t.handle(cpu(101, 10e9), state)
    assert out["volume"] == 100.0


def test_rate_ignores_duplicates_and_older_samples():
    t, state = RateOfChange("s/0", CPU_UTIL), {}
    first, second = cpu(100, 0), cpu(110, 10e9)
    t.handle(first, state)
    t.handle(second, state)
    before = repr(state)
    assert t.handle(second, state) == []  # redelivered
    assert t.handle(cpu(105, 5e9), state) == []  # out of order
    assert repr(state) == before


def test_rate_derived_ids_are_deterministic():
    s0, s1 = cpu(100, 0), cpu(110, 10e9)
    a = RateOfChange("s/0", CPU_UTIL)
    b = RateOfChange("s/0", CPU_UTIL)
    sa, sb = {}, {}
    a.handle(s0, sa)
    b.handle(s0, sb)
    assert a.handle(s1, sa)[0]["message_id"] == b.handle(s1, sb)[0]["message_id"] == derived_id("s/0", s1["message_id"])


def test_rate_missing_metadata_is_a_transform_error():
    t, state = RateOfChange("s/0", CPU_UTIL), {}
    t.handle(cpu(100, 0), state)
    s = cpu(110, 1e9)
    s["resource_metadata"] = {}
    with pytest.raises(TransformError, match="cpu_number is missing"):
        t.handle(s, state)


def test_rate_series_are_per_meter():
    t, state = RateOfChange("s/0", {"target": {"name": "rate"}}), {}
    t.handle(cpu(100, 0), state)
    other = make_test_sample(name="disk.read.bytes", volume=0.0, timestamp=105 * S)
    assert t.handle(other, state) == []  # first of its own series
    [out] = t.handle(cpu(110, 100), state)
    assert out["volume"] == pytest.approx(10.0)


def test_rate_skips_samples_source_does_not_match():
    t = RateOfChange("s/0", {"source": {"unit": "ns"}, "target": {"name": "r"}})
    s = make_test_sample(unit="B")
    assert t.handle(s, {}) == [s]


# ---------------------------------------------------------------- unit_conversion
def test_unit_conversion_scale_number_and_rename():
    t = UnitConversion("s/0", {"target": {"scale": 1 / 1024, "unit": "KiB", "name": "mem.kib"}})
    s = make_test_sample(name="mem", unit="B", volume=2048.0)
    [out] = t.handle(s, {})
    assert (out["name"], out["unit"], out["volume"]) == ("mem.kib", "KiB", 2.0)
    assert s["volume"] == 2048.0  # input untouched
    assert out["message_id"] != s["message_id"]


def test_unit_conversion_expression_and_regex_map():
    t = UnitConversion("s/0", {
        "source": {"map_from": {"name": r"disk\.(read|write)\.bytes"}},
        "target": {"map_to": {"name": r"disk.\1.kilobytes"}, "scale": "volume * 1.0 / 1024.0", "unit": "KB"},
    })
    [out] = t.handle(make_test_sample(name="disk.write.bytes", unit="B", volume=4096.0), {})
    assert (out["name"], out["unit"], out["volume"]) == ("disk.write.kilobytes", "KB", 4.0)
    passthrough = make_test_sample(name="memory.usage")
    assert t.handle(passthrough, {}) == [passthrough]


def test_source_match_and_name_mapping_are_the_regex_results_remembered_or_not(monkeypatch):
    """_Target remembers accepts() per (name, unit) and map_to per value, up to _MEMO_ENTRIES; past
    that bound (here 3) it computes each time, with the same results."""
    monkeypatch.setattr(core, "_MEMO_ENTRIES", 3)
    t = UnitConversion("s/0", {
        "source": {"unit": "B", "map_from": {"name": r"^disk\.(\w+)\.bytes$", "unit": "^(B)$"}},
        "target": {"map_to": {"name": r"disk.\1.kib", "unit": r"Ki\1"}, "scale": 1 / 1024},
    })
    cases = [(f"disk.d{k}.bytes", "B", (f"disk.d{k}.kib", "KiB")) for k in range(6)]
    cases += [("disk.d1.bytes", "KB", None), ("disk.d1.packets", "B", None), ("disk..bytes", "B", None)]
    for _ in range(2):  # the second pass reads what the first remembered
        for name, unit, want in cases:
            s = make_test_sample(name=name, unit=unit, volume=2048.0)
            [out] = t.handle(s, {})
            assert ((out["name"], out["unit"]) if out is not s else None) == want
            if want:
                assert out["volume"] == 2.0
    assert len(t.target._accepted) == 3 and len(t.target._mapped) == 3


@pytest.mark.parametrize(
    "params, problem",
    [
        ({"target": {"scale": "import os"}}, "syntax error"),
        ({"target": {"scale": "volume.real"}}, "not allowed"),
        ({"target": {"scale": [1]}}, "number or an expression"),
        ({"target": {"type": "counter"}}, "not one of"),
        ({"source": {"map_from": {"name": "("}}, "target": {"map_to": {"name": "x"}}}, "bad regular expression"),
        ({"source": {"map_from": {"name": "a"}}}, "same fields"),
        ({"target": "x"}, "must be a mapping"),
    ],
)
def test_unit_conversion_bad_config(params, problem):
    with pytest.raises(TransformerConfigError, match=problem):
        UnitConversion("sink/0", params)


# ---------------------------------------------------------------- delta
def test_delta_first_growth_and_growth_only():
    t, state = Delta("s/0", {"growth_only": True}), {}
    assert t.handle(cpu(100, 10), state) == []
    [d] = t.handle(cpu(110, 15), state)
    assert (d["name"], d["type"], d["volume"]) == ("cpu.delta", "delta", 5.0)
    assert t.handle(cpu(120, 3), state) == []  # negative dropped
    [d] = t.handle(cpu(130, 4), state)
    assert d["volume"] == 1.0


def test_delta_negative_kept_without_growth_only():
    t, state = Delta("s/0", {"target": {"name": "d"}}), {}
    t.handle(cpu(100, 10), state)
    assert t.handle(cpu(110, 4), state)[0]["volume"] == -6.0


# ---------------------------------------------------------------- accumulator
def test_accumulator_releases_size_at_a_time_and_ignores_duplicates():
    t, state = Accumulator("s/0", {"size": 3}), {}
    a, b, c = (make_test_sample(timestamp=i) for i in (1, 2, 3))
    assert t.handle(a, state) == [] and t.handle(a, state) == [] and t.handle(b, state) == []
    assert [s["message_id"] for s in t.handle(c, state)] == [a["message_id"], b["message_id"], c["message_id"]]
    assert state["held"] == []


@pytest.mark.parametrize("size", [0, -1, "3", 1.5])
def test_accumulator_bad_size(size):
    with pytest.raises(TransformerConfigError, match="size"):
        Accumulator("s/0", {"size": size})


# ---------------------------------------------------------------- aggregator
def test_aggregator_sums_gauges_by_size_with_policies():
    t, state = Aggregator("s/0", {"size": 3, "user_id": "drop", "project_id": "first"}), {}
    outs = []
    for i, (v, proj) in enumerate([(1.0, "p1"), (2.0, "p2"), (4.0, "p3")]):
        outs += t.handle(make_test_sample(name="net", type="gauge", volume=v, timestamp=(i + 1) * S,
                                          project_id=proj, user_id="u"), state)
    [agg] = outs
    assert agg["volume"] == 7.0 and agg["project_id"] == "p1" and agg["user_id"] is None
    assert agg["timestamp"] == 3 * S


def test_aggregator_cumulative_keeps_last_and_retention_in_event_time():
    t, state = Aggregator("s/0", {"retention_time": 60}), {}
    assert t.handle(cpu(0, 10), state) == []
    assert t.handle(cpu(30, 20), state) == []
    [agg] = t.handle(cpu(61, 50), state)  # 61 s after the first: flushes the open aggregate
    assert agg["volume"] == 20.0 and agg["timestamp"] == 30 * S
    assert t.handle(cpu(61, 50), state) == []  # duplicate of the new aggregate's first sample


@pytest.mark.parametrize("params, problem", [
    ({"size": 0}, "size"), ({"retention_time": -1}, "retention_time"), ({"user_id": "random"}, "not one of"),
])
def test_aggregator_bad_config(params, problem):
    with pytest.raises(TransformerConfigError, match=problem):
        Aggregator("s/0", params)


# ---------------------------------------------------------------- arithmetic
MEM_PCT = {"target": {"name": "memory.util", "unit": "%", "expr": "100 * $(memory.usage) / $(memory)"}}


def test_arithmetic_combines_meters_of_one_poll():
    t, state = Arithmetic("s/0", MEM_PCT), {}
    assert t.handle(make_test_sample(name="memory.usage", volume=512.0, timestamp=10 * S), state) == []
    [out] = t.handle(make_test_sample(name="memory", volume=2048.0, timestamp=10 * S), state)
    assert (out["name"], out["unit"], out["volume"]) == ("memory.util", "%", 25.0)
    # next poll: one meter is not enough
    assert t.handle(make_test_sample(name="memory", volume=2048.0, timestamp=20 * S), state) == []
    other = make_test_sample(name="cpu")
    assert t.handle(other, state) == [other]


def test_arithmetic_division_by_zero_is_a_transform_error():
    t, state = Arithmetic("s/0", MEM_PCT), {}
    t.handle(make_test_sample(name="memory.usage", volume=1.0, timestamp=S), state)
    with pytest.raises(TransformError):
        t.handle(make_test_sample(name="memory", volume=0.0, timestamp=S), state)


@pytest.mark.parametrize("params, problem", [
    ({"target": {"name": "x"}}, "expr: required"),
    ({"target": {"name": "x", "expr": "1 + 2"}}, "references no meter"),
    ({"target": {"name": "x", "expr": "$(a).resource_metadata"}}, "not allowed"),
    ({"target": {"expr": "$(a)"}}, "name: required"),
])
def test_arithmetic_bad_config(params, problem):
    with pytest.raises(TransformerConfigError, match=problem):
        Arithmetic("s/0", params)


def test_derived_ids_are_rfc_4122_uuid5_whatever_the_input():
    import random
    import uuid

    from streams.transformers.base import _NAMESPACE, derived_id

    rnd = random.Random(3)
    for _ in range(500):
        tid = "".join(rnd.choice("abc/0é漢") for _ in range(rnd.randint(0, 12)))
        mid = str(uuid.UUID(int=rnd.getrandbits(128)))
        assert derived_id(tid, mid) == str(uuid.uuid5(_NAMESPACE, f"{tid}\x00{mid}"))


def test_uuid5_text_in_c_is_the_python_twins_and_uuids_text():
    import hashlib
    import random
    import uuid

    from streams._columns import uuid5_text

    from streams.transformers.base import uuid5_text_py

    rnd = random.Random(5)
    for n in (16, 20, 32):  # SHA-1 gives 20 bytes; only the first 16 count
        for _ in range(300):
            digest = rnd.randbytes(n)
            want = str(uuid.UUID(bytes=digest[:16], version=5))
            assert uuid5_text(digest) == uuid5_text_py(digest) == want
    digest = hashlib.sha1(b"x").digest()
    assert type(uuid5_text(digest)) is str and uuid5_text(digest).isascii()
    for bad in (b"", b"x" * 15):
        with pytest.raises(ValueError, match="fewer than 16 bytes"):
            uuid5_text(bad)
        with pytest.raises(ValueError, match="fewer than 16 bytes"):
            uuid5_text_py(bad)
    with pytest.raises(TypeError):
        uuid5_text("not bytes" * 4)
