"""Pure MQTT topic utilities: validation, matching (with the ``$``-topic rule), shared subscriptions.

* A topic *name* (PUBLISH) is 1..65535 UTF-8 bytes, no ``+``/``#``, no U+0000.
* A topic *filter* (SUBSCRIBE) is 1..65535 UTF-8 bytes, no U+0000; ``+`` must be a whole level,
  ``#`` must be the whole last level.
* ``$share/GROUP/filter`` is a shared subscription (MQTT 5, also understood by most 3.1.1
  brokers): GROUP is non-empty and has no ``/``, ``+`` or ``#``; filter is a valid filter.
* Wildcards in a filter's first level never match a topic name starting with ``$``.
"""

from __future__ import annotations

from typing import NamedTuple

from .constants import MAX_STRING_BYTES, SHARED_SUBSCRIPTION_PREFIX

__all__ = [
    "TopicError",
    "SharedSubscription",
    "validate_topic_name",
    "validate_topic_filter",
    "is_valid_topic_name",
    "is_valid_topic_filter",
    "has_wildcards",
    "parse_shared_subscription",
    "topic_matches",
]


class TopicError(ValueError):
    """An invalid topic name or topic filter."""


class SharedSubscription(NamedTuple):
    group: str
    topic_filter: str


def _check_common(value: str, what: str) -> None:
    if not isinstance(value, str):
        raise TopicError(f"{what} must be str, not {type(value).__name__}")
    if not value:
        raise TopicError(f"{what} must not be empty")
    if "\x00" in value:
        raise TopicError(f"{what} contains U+0000")
    if len(value) * 4 > MAX_STRING_BYTES:  # cheap bound first; exact check only for long ones
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise TopicError(f"{what} is not encodable as UTF-8") from exc
        if size > MAX_STRING_BYTES:
            raise TopicError(f"{what} is longer than {MAX_STRING_BYTES} bytes")


def validate_topic_name(name: str) -> None:
    """Raise :class:`TopicError` unless *name* is a valid PUBLISH topic name."""
    _check_common(name, "topic name")
    if "+" in name or "#" in name:
        raise TopicError(f"topic name {name!r} contains a wildcard")


def _check_filter_levels(topic_filter: str) -> None:
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if level == "+":
            continue
        if level == "#":
            if i != last:
                raise TopicError(f"topic filter {topic_filter!r}: '#' must be the last level")
            continue
        if "#" in level:
            raise TopicError(f"topic filter {topic_filter!r}: '#' must occupy a whole level")
        if "+" in level:
            raise TopicError(f"topic filter {topic_filter!r}: '+' must occupy a whole level")


def validate_topic_filter(topic_filter: str, *, allow_shared: bool = True) -> None:
    """Raise :class:`TopicError` unless *topic_filter* is a valid SUBSCRIBE topic filter.

    With ``allow_shared`` (default) a filter starting ``$share/`` must be a well-formed shared
    subscription; without it, it is checked as an ordinary filter."""
    _check_common(topic_filter, "topic filter")
    if allow_shared and topic_filter.startswith(SHARED_SUBSCRIPTION_PREFIX):
        parse_shared_subscription(topic_filter)  # raises on a bad group / missing filter
        return
    _check_filter_levels(topic_filter)


def is_valid_topic_name(name: str) -> bool:
    try:
        validate_topic_name(name)
    except TopicError:
        return False
    return True


def is_valid_topic_filter(topic_filter: str, *, allow_shared: bool = True) -> bool:
    try:
        validate_topic_filter(topic_filter, allow_shared=allow_shared)
    except TopicError:
        return False
    return True


def is_valid_rule_filter(topic_filter: str) -> bool:
    """A filter a hub admin's topic rule can use (`mqtt map`, the MQTT page): no $share/, no
    leading $ (those topics are the broker's own)."""
    return is_valid_topic_filter(topic_filter, allow_shared=False) and not topic_filter.startswith("$")


def has_wildcards(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def parse_shared_subscription(topic_filter: str) -> SharedSubscription | None:
    """``"$share/g/a/+"`` -> ``SharedSubscription("g", "a/+")``; ``None`` for a non-shared filter.

    Raises :class:`TopicError` for a malformed shared subscription (empty group, group with
    ``+``/``#``, missing or invalid filter)."""
    if not topic_filter.startswith(SHARED_SUBSCRIPTION_PREFIX):
        return None
    rest = topic_filter[len(SHARED_SUBSCRIPTION_PREFIX):]
    group, sep, inner = rest.partition("/")
    if not group:
        raise TopicError(f"shared subscription {topic_filter!r} has an empty share name")
    if "+" in group or "#" in group:
        raise TopicError(f"shared subscription {topic_filter!r}: share name contains a wildcard")
    if not sep or not inner:
        raise TopicError(f"shared subscription {topic_filter!r} has no topic filter")
    _check_filter_levels(inner)
    return SharedSubscription(group, inner)


def topic_matches(topic_filter: str, name: str) -> bool:
    """Whether PUBLISH topic *name* matches subscription *topic_filter* (not shared-prefixed;
    strip ``$share/GROUP/`` with :func:`parse_shared_subscription` first).

    Both arguments are assumed valid. ``sport/#`` matches ``sport``; ``+`` matches an empty level;
    ``#``/``+`` as the first level do not match names beginning with ``$``."""
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == name
    if name[:1] == "$" and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    n_levels = name.split("/")
    n_count = len(n_levels)
    for i, level in enumerate(f_levels):
        if level == "#":
            return True  # matches the parent level too ("a/#" matches "a")
        if i >= n_count:
            return False
        if level != "+" and level != n_levels[i]:
            return False
    return len(f_levels) == n_count
