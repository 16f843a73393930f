from streams.pollers.hooks import HookChain, StatsdHook, WatermarkHook
from tests.conftest import make_test_sample


def s(name, volume, rid="r1"):
    return make_test_sample(name=name, volume=volume, resource_id=rid, type="gauge", unit="%")


def test_watermark_crossing_emits_first_beyond_then_each_crossing_per_resource():
    h = WatermarkHook(threshold=90)
    assert [h(s("cpu_util", v)) for v in (50, 95, 97, 80, 70, 91)] == [False, True, False, True, False, True]
    assert h(s("cpu_util", 99, rid="r2"))  # another resource has its own state
    below = WatermarkHook(threshold=10, direction="below", emit="beyond")
    assert [below(s("x", v)) for v in (5, 50, 1)] == [True, False, True]


def test_chain_drops_passes_and_replaces_from_documents():
    chain = HookChain()
    batch = [s("cpu_util", 95), s("memory.usage", 1), s("memory.swap", 1), s("cpu", 3)]
    assert chain.apply(batch) == batch  # no hooks: everything passes
    assert chain.load(b"""
hooks:
  - {meters: [cpu_util], kind: watermark, threshold: 90, emit: beyond}
  - {meters: ["memory.*", "!memory.usage"], kind: drop}
  - {meters: [cpu], kind: pass}
""")
    assert [x["name"] for x in chain.apply(batch)] == ["cpu_util", "memory.usage", "cpu"]
    assert chain.load(b'{"hooks": [{"meters": ["cpu_util"], "kind": "watermark", "threshold": 99, "emit": "beyond"}]}')
    assert [x["name"] for x in chain.apply(batch)] == ["memory.usage", "memory.swap", "cpu"]


def test_bad_documents_keep_the_previous_hooks():
    chain = HookChain()
    assert chain.load(b"hooks: [{meters: [cpu], kind: drop}]")
    v = chain.version
    for bad in (b"hooks: [{meters: [cpu], kind: nope}]", b"hooks: [{meters: ['c u'], kind: drop}]",
                b"hooks: [{meters: [cpu], kind: watermark}]", b"hooks: [oops", b"colour: red"):
        assert not chain.load(bad)
    assert chain.version == v and chain.apply([s("cpu", 1)]) == []
    assert chain.load(None) and chain.apply([s("cpu", 1)])  # znode deleted: no hooks


def test_statsd_line():
    h = StatsdHook(address="127.0.0.1:8125", prefix="edge")
    assert h.line(s("cpu_util", 93.5, rid="host/process/1-2")) == "edge.cpu_util.host_process_1-2:93.5|g"
    assert StatsdHook(address="127.0.0.1:8125", include_resource=False).line(s("cpu", 3)) == "streams.cpu:3|g"


def test_watermark_state_is_bounded_by_series_and_time():
    from streams.pollers.hooks import WatermarkHook

    hook = WatermarkHook(threshold=90, max_series=100, series_ttl=60)
    for i in range(10_000):  # processes that come and go: each a new resource id
        hook(make_test_sample(name="cpu_util", resource_id=f"host/process/{i}", volume=95.0))
    assert len(hook._beyond) == 100
    from cachetools import TTLCache

    clock = [0.0]
    hook._beyond = TTLCache(maxsize=100, ttl=60, timer=lambda: clock[0])  # the same cache, on a clock moved by hand
    hook(make_test_sample(name="cpu_util", resource_id="r", volume=95.0))
    assert not hook(make_test_sample(name="cpu_util", resource_id="r", volume=96.0))  # no crossing
    clock[0] = 61.0
    assert hook(make_test_sample(name="cpu_util", resource_id="r", volume=96.0))  # forgotten: starts again
