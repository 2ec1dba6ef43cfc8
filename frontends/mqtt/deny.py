"""Per-filter deny rules for subscriptions (`mqtt_deny_subscribe`), pure.

Room membership already decides who reads what; these rules are the operator's extra "never over
MQTT" list (e.g. a topic the devices must not listen on, or the `test/nosubscribe` the Eclipse
Paho interoperability suite expects a broker to refuse). Two effects, so that a wider filter
cannot get round a rule:

* a SUBSCRIBE filter whose every possible topic lies inside a deny filter is refused
  (SUBACK 0x80 in 3.1.1, 0x87 Not authorized in 5.0);
* a message whose topic matches a deny filter is not delivered to any subscription (`#` and
  `+/...` included), retained messages too.
"""
from __future__ import annotations

from typing import Iterable

from .topics import is_valid_topic_filter, parse_shared_subscription, topic_matches


class DenyRules:
    """The deny filters of one broker; empty means nothing is refused (the default)."""

    def __init__(self, filters: Iterable[str] = ()) -> None:
        self.filters: tuple[str, ...] = tuple(filters)
        for topic_filter in self.filters:
            if not is_valid_topic_filter(topic_filter, allow_shared=False):
                raise ValueError(f"mqtt_deny_subscribe: {topic_filter!r} is not a valid topic filter")

    def __bool__(self) -> bool:
        return bool(self.filters)

    def refuses(self, topic_filter: str) -> bool:
        """Whether a SUBSCRIBE to *topic_filter* (possibly `$share/GROUP/...`) is refused: all it
        could ever receive is denied."""
        shared = parse_shared_subscription(topic_filter)
        inner = shared.topic_filter if shared is not None else topic_filter
        return any(covers(deny, inner) for deny in self.filters)

    def hides(self, topic: str) -> bool:
        """Whether a message on *topic* is withheld from every subscriber."""
        return any(topic_matches(deny, topic) for deny in self.filters)


def covers(outer: str, inner: str) -> bool:
    """Whether every topic name matched by filter *inner* is matched by filter *outer*.

    Level by level: `#` in *outer* covers the rest (and the parent level); `+` in *outer* covers
    one level of anything but `#`; a literal covers only itself. `#` and `+` first levels never
    match `$` topics, so they do not cover a filter starting with `$`."""
    if outer == inner:
        return True
    if inner[:1] == "$" and outer[:1] in ("+", "#"):
        return False
    o_levels = outer.split("/")
    i_levels = inner.split("/")
    for i, level in enumerate(o_levels):
        if level == "#":
            return True
        if i >= len(i_levels):
            return False
        other = i_levels[i]
        if other == "#":
            # inner also matches names ending before this level, except at the first level (a name
            # has at least one level): there "+/#" covers "#".
            return i == 0 and level == "+" and o_levels[1:] == ["#"]
        if level != "+" and level != other:
            return False
        # level "+" covers a literal or "+" in inner
    return len(i_levels) == len(o_levels)  # a longer inner filter reaches names outer does not
