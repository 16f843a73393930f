from streams.coordination.ring import extract_my_subset, owner

ITEMS = [f"res-{i}" for i in range(3000)]


def shares(members):
    return {m: set(extract_my_subset(members, m, ITEMS)) for m in members}


def test_shares_are_disjoint_and_cover_everything():
    s = shares(["a", "b", "c"])
    assert set().union(*s.values()) == set(ITEMS)
    assert sum(len(v) for v in s.values()) == len(ITEMS)
    assert all(len(v) > len(ITEMS) / 6 for v in s.values())  # roughly balanced


def test_join_moves_only_about_one_nth_and_only_to_the_newcomer():
    before, after = shares(["a", "b", "c"]), shares(["a", "b", "c", "d"])
    for m in "abc":
        assert after[m] <= before[m]  # old members only lose items
    moved = len(after["d"])
    assert 0.15 * len(ITEMS) < moved < 0.35 * len(ITEMS)


def test_leave_hands_only_the_leavers_items_to_the_others():
    before, after = shares(["a", "b", "c"]), shares(["a", "b"])
    for m in "ab":
        assert before[m] <= after[m]
        assert after[m] - before[m] <= before["c"]
    assert after["a"] | after["b"] == set(ITEMS)


def test_single_member_and_not_yet_joined_member():
    assert extract_my_subset(["a"], "a", ITEMS) == ITEMS
    assert extract_my_subset([], "a", ITEMS) == ITEMS
    # a member missing from the list still takes the share it will own (overlap, never a gap)
    assert set(extract_my_subset(["b", "c"], "a", ITEMS)) == shares(["a", "b", "c"])["a"]


def test_owner_agrees_with_subsets_and_key_function():
    members = ["a", "b", "c"]
    for i in ITEMS[:50]:
        assert i in extract_my_subset(members, owner(members, i), ITEMS)
    objs = [{"id": i} for i in ITEMS[:100]]
    got = extract_my_subset(members, "a", objs, key=lambda o: o["id"])
    assert [o["id"] for o in got] == [i for i in ITEMS[:100] if owner(members, i) == "a"]
