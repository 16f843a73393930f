"""Consistent hash ring over group members: who polls which resource (pure, no I/O).

The rule is Ceilometer's ``PartitionCoordinator.extract_my_subset``: every
member builds the same ring from the same member list and keeps the items
that hash to itself, so the members' shares are disjoint and their union is
everything, with no messages exchanged. The ring is uhashring's (ketama-style
md5 points, 160 per member), so a member joining or leaving moves only about
1/N of the items, and only to or from that member.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import TypeVar

from uhashring import HashRing

T = TypeVar("T")


@lru_cache(maxsize=32)
def _ring(members: frozenset[str]) -> HashRing:
    return HashRing(nodes=sorted(members))


def owner(members: Iterable[str], key: str) -> str:
    """The member that owns ``key``.

    Raises:
        ValueError: ``members`` is empty.
    """
    ms = frozenset(members)
    if not ms:
        raise ValueError("no members")
    return _ring(ms).get_node(key)


def extract_my_subset(members: Iterable[str], me: str, items: Iterable[T],
                      key: Callable[[T], str] = str) -> list[T]:
    """The items of ``items`` that ``me`` owns on the ring of ``members`` (order kept).

    ``me`` is always counted as a member (a member that has not (re)joined yet
    polls the share it will own, rather than nothing): a short overlap, never
    a gap. With ``members`` = {me} this is every item (single-member mode).
    """
    ms = frozenset(members) | {me}
    if len(ms) == 1:
        return list(items)
    ring = _ring(ms)
    return [i for i in items if ring.get_node(key(i)) == me]
