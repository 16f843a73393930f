"""streams.processor.app.worker_for: the Faust worker never turns the root logger to DEBUG."""

import logging

import faust

from streams.processor.app import worker_for


def _app() -> faust.App:
    return faust.App("test-worker", broker="kafka://127.0.0.1:1")  # never started: nothing connects


def _root() -> logging.Logger:
    logger = logging.Logger("root-double")  # stands in for the root logger: not registered, not global
    logger.setLevel(logging.WARNING)
    logger.addHandler(logging.StreamHandler())
    return logger


def test_faust_worker_at_warning_sets_the_root_logger_to_debug_for_its_spinner():
    # Faust's own behaviour, which worker_for undoes: if this fails, Faust changed and the workaround can go.
    worker = faust.Worker(_app(), loglevel="warning", quiet=True)
    root = _root()
    worker.on_setup_root_logger(root, logging.WARNING)
    assert root.level == logging.DEBUG
    assert len(root.handlers) == 2


def test_worker_for_keeps_the_root_logger_at_its_level():
    worker = worker_for((_app(),), "warning")
    for level in (logging.WARNING, logging.ERROR, logging.INFO):
        root = _root()
        root.setLevel(level)
        worker.on_setup_root_logger(root, level)
        assert root.level == level
        assert len(root.handlers) == 1
        assert not root.isEnabledFor(logging.DEBUG)  # a library's log.debug returns before building a record
    assert worker.loglevel == "warning"
