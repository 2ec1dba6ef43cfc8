"""The MQTT page's topic tree without sockets: which events are topic values and how they read
(messages.topic_entry, pure), and the view's bounds and `since` bookkeeping (topic_view.py)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from frontends.mqtt.messages import VALUE_CHARS, message_content, payload_text, publish_content, topic_entry
from frontends.mqtt.routing import RETAINED_TYPE
from frontends.mqtt.topic_view import TopicView


def test_topic_entry_reads_messages_and_retained() -> None:
    mqtt = publish_content("home/kitchen/temp", b'{"t": 21.5}', 1, {})
    assert topic_entry("m.room.message", message_content(mqtt), None) == ("home/kitchen/temp", '{"t": 21.5}', False)
    assert topic_entry(RETAINED_TYPE, publish_content("lamp", b"on", 0, {}), "lamp") == ("lamp", "on", True)
    assert topic_entry(RETAINED_TYPE, {}, "lamp") == ("lamp", "", True)  # a cleared retained message
    assert topic_entry("m.room.message", {"msgtype": "m.text", "body": "hi"}, None) is None
    assert topic_entry("m.room.member", {"membership": "join"}, "@a:b") is None
    assert topic_entry("m.room.message", {"mqtt": "not an object"}, None) is None


def test_payload_text_is_short_text_of_every_kind() -> None:
    assert payload_text(publish_content("t", b"\x00\x01\xff", 0, {})["payload"]) == "<3 bytes>"
    assert payload_text(publish_content("t", ("é" * 500).encode(), 0, {})["payload"]) == "é" * VALUE_CHARS + "…"
    assert payload_text({"kind": "media", "mimetype": "image/png", "size": 10}) == "<image/png, 10 bytes>"
    assert payload_text(None) == "?"


def event(topic: str, payload: bytes, ts: int, room: str = "!r:h") -> Any:
    return SimpleNamespace(type="m.room.message", content=message_content(publish_content(topic, payload, 0, {})),
                           state_key=None, origin_server_ts=ts, room_id=room)


def test_view_is_bounded_and_answers_what_changed_since() -> None:
    async def run() -> None:
        view = TopicView(SimpleNamespace(), SimpleNamespace(), max_topics=3)  # type: ignore[arg-type]
        view._on_stream([(1, event("a/1", b"x", 1)), (2, event("a/2", b"y", 2))])
        found, upto, truncated = view.changes(0, 10)
        assert [t["topic"] for t in found] == ["a/2", "a/1"] and upto == 2 and not truncated
        view._on_stream([(3, event("a/1", b"z", 3))])
        found, upto2, _ = view.changes(upto, 10)
        assert [(t["topic"], t["value"]) for t in found] == [("a/1", "z")]
        view._on_stream([(4, event("b", b"1", 4)), (5, event("c", b"2", 5))])  # over the cap: a/2 goes
        found, _, truncated = view.changes(0, 10)
        assert [t["topic"] for t in found] == ["c", "b", "a/1"] and truncated and view.forgotten == 1
        found, _, truncated = view.changes(0, 2)
        assert len(found) == 2 and truncated
        assert view.changes(view._seq, 10)[0] == []
    asyncio.run(run())


def test_wait_returns_on_a_change_or_the_timeout() -> None:
    async def run() -> None:
        stream = SimpleNamespace(subscribe=lambda fn: (lambda: None))
        view = TopicView(SimpleNamespace(stream=stream), SimpleNamespace())  # type: ignore[arg-type]
        view.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await view.wait(0, 0.05)
        assert loop.time() - started >= 0.05
        waiter = asyncio.ensure_future(view.wait(0, 5))
        await asyncio.sleep(0)
        view._on_stream([(1, event("x", b"1", 1))])
        await asyncio.wait_for(waiter, 1)
        await view.wait(0, 5)  # already changed after 0: at once
    asyncio.run(run())
