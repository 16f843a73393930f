"""BatchState: copy-on-read overlay, chaining through uncommitted batches, ordered commits."""

from streams.processor.state import BatchState


class TableDouble(dict):
    """In-memory stand-in for ResourceStateTable: records (partition, key, value) writes."""

    write_partition = None

    def __init__(self):
        super().__init__()
        self.writes = []

    def __setitem__(self, key, value):
        assert self.write_partition is not None
        self.writes.append((self.write_partition, key, value))
        super().__setitem__(key, value)


def test_reads_are_copies_and_only_changes_are_written():
    table = TableDouble()
    dict.__setitem__(table, "r1", {"t": {"n": 1}})
    dict.__setitem__(table, "r2", {"t": {"n": 5}})
    batch = BatchState(table)
    s1 = batch.get("r1", partition=3)
    s1["t"]["n"] = 2
    batch.get("r2", partition=1)  # read, unchanged
    batch.get("r3", partition=0)["new"] = True
    assert table["r1"] == {"t": {"n": 1}}  # nothing written before commit
    assert batch.commit() == 2
    assert table.writes == [(3, "r1", {"t": {"n": 2}}), (0, "r3", {"new": True})]
    assert table.write_partition is None


def test_next_batch_sees_uncommitted_state_of_the_previous_one():
    table = TableDouble()
    pending: dict = {}
    first = BatchState(table, pending)
    first.get("r", 0)["count"] = 1
    second = BatchState(table, pending)  # prepared while `first` is still being stored
    state = second.get("r", 0)
    assert state == {"count": 1}
    state["count"] = 2
    assert first.commit() == 1 and table["r"] == {"count": 1}
    assert pending["r"][1] is second  # still pending: the newer batch owns it
    assert second.commit() == 1 and table["r"] == {"count": 2}
    assert pending == {}


def test_unchanged_relative_to_previous_batch_is_not_rewritten():
    table = TableDouble()
    pending: dict = {}
    first = BatchState(table, pending)
    first.get("r", 0)["x"] = 1
    second = BatchState(table, pending)
    second.get("r", 0)  # read only
    first.commit()
    assert second.commit() == 0
    assert [w[1] for w in table.writes] == ["r"]
