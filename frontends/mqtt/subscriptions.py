"""Who is subscribed to what: an index from topic filters to sessions. Pure.

Exact filters are a dict lookup; wildcard filters are scanned (a hub has few of them); shared
subscriptions (`$share/GROUP/FILTER`) are kept per (group, filter) so one member is chosen.
"""
from __future__ import annotations

from typing import TypeVar

from .packets import Subscription
from .topics import parse_shared_subscription, topic_matches

Match = dict[str, list[Subscription]]  # session key -> its matching subscriptions
K = TypeVar("K")


class SubscriptionIndex:
    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Subscription]] = {}
        self._wild: dict[str, dict[str, Subscription]] = {}
        self._shared: dict[tuple[str, str], dict[str, Subscription]] = {}
        self._rr: dict[tuple[str, str], int] = {}

    def add(self, key: str, sub: Subscription) -> None:
        shared = parse_shared_subscription(sub.topic_filter)
        if shared is not None:
            self._shared.setdefault((shared.group, shared.topic_filter), {})[key] = sub
        elif "+" in sub.topic_filter or "#" in sub.topic_filter:
            self._wild.setdefault(sub.topic_filter, {})[key] = sub
        else:
            self._exact.setdefault(sub.topic_filter, {})[key] = sub

    def remove(self, key: str, topic_filter: str) -> None:
        shared = parse_shared_subscription(topic_filter)
        if shared is not None:
            _discard(self._shared, (shared.group, shared.topic_filter), key)
        elif "+" in topic_filter or "#" in topic_filter:
            _discard(self._wild, topic_filter, key)
        else:
            _discard(self._exact, topic_filter, key)

    def match(self, topic: str) -> Match:
        """Non-shared subscriptions matching `topic`, grouped by session."""
        out: Match = {}
        exact = self._exact.get(topic)
        if exact:
            for key, sub in exact.items():
                out[key] = [sub]
        for topic_filter, subs in self._wild.items():
            if topic_matches(topic_filter, topic):
                for key, sub in subs.items():
                    out.setdefault(key, []).append(sub)
        return out

    def match_shared(self, topic: str) -> list[tuple[tuple[str, str], dict[str, Subscription]]]:
        return [(k, subs) for k, subs in self._shared.items() if topic_matches(k[1], topic)]

    def pick(self, group: tuple[str, str], candidates: list[str]) -> str:
        """Round-robin over the eligible members of a share group."""
        n = self._rr.get(group, 0)
        self._rr[group] = n + 1
        return sorted(candidates)[n % len(candidates)]


def _discard(table: dict[K, dict[str, Subscription]], k: K, key: str) -> None:
    """Drop session `key` from the entry `k` of one of the index's tables, and the entry once empty."""
    entry = table.get(k)
    if entry is not None:
        entry.pop(key, None)
        if not entry:
            del table[k]
