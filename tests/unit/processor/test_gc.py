"""streams.processor.app.tune_gc: fewer cyclic collections."""

import gc

from streams.processor.app import tune_gc


def test_tune_gc_raises_the_young_generation_threshold_only():
    before = gc.get_threshold()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before  # 0: Python's settings stay
        tune_gc(50_000)
        assert gc.get_threshold() == (50_000, before[1], before[2])
        assert gc.get_freeze_count() == 0  # nothing frozen: chdb crashed at exit with frozen objects
    finally:
        gc.set_threshold(*before)
