"""streams.processor.app.tune_gc: fewer cyclic collections, start-up objects frozen."""

import gc

from streams.processor.app import tune_gc


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before  # 0: Python's settings stay
        tune_gc(50_000)
        assert gc.get_threshold() == (50_000, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
