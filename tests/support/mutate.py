"""A small seeded mutation fuzzer: valid inputs in, plausible broken inputs out. Pure, no I/O.

Why our own and not a library: the CI run must be reproducible from one integer (the seed), run
in-process against pure functions at a few hundred thousand inputs a second, and need nothing
beyond the standard library. The mutations are the classic ones of AFL/libFuzzer (bit flips,
interesting values, insertions, deletions, truncation, duplication, splicing two corpus inputs),
applied one to four at a time to a valid corpus input, so most inputs are *nearly* valid and get
past the first length or type check into the parser's deeper branches.

`run` drives a check function with mutated inputs for a count or a time budget and returns what it
tried and what failed; the same (seed, corpus) always produces the same inputs in the same order.
"""
from __future__ import annotations

import copy
import random
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["Mutator", "Failure", "Result", "run", "mutate_json"]

#: Byte values that sit on boundaries parsers test (length bytes, continuation bits, markers).
INTERESTING_8 = (0x00, 0x01, 0x02, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x17, 0x18, 0x1B, 0x1F, 0x20, 0x3F,
                 0x40, 0x7E, 0x7F, 0x80, 0x81, 0xBF, 0xC0, 0xF4, 0xF5, 0xFE, 0xFF)
#: Two-byte big-endian values: empty, one, sign and continuation boundaries, the maximum.
INTERESTING_16 = (0x0000, 0x0001, 0x007F, 0x0080, 0x00FF, 0x0100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
#: Byte strings worth inserting whole: JSON/CBOR/MQTT/CoAP tokens and bad UTF-8.
INTERESTING_CHUNKS = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\\u0000",
                      b"\\ud800", b"\"", b"{", b"}", b"[", b"]", b":", b",", b"1e999", b"-0",
                      b"9007199254740993", b"NaN", b"$", b"#", b"+", b"/", b"%", b"%00", b"\xf9\x7e\x00",
                      b"\x9f", b"\xbf", b"\x5f", b"\x7f", b"\xc2", b"\xd8\x19", b"\x80\x80\x80\x80\x01")


#: JSON values of every type, for replacing a node of a request body (what byte flips rarely
#: produce: a well-formed body with a value of the wrong type where a handler expects another).
INTERESTING_JSON: tuple[object, ...] = (None, True, False, 0, -1, 2**53 - 1, -(2**53) + 1, 2**53, 10**30, 1.5,
                                        "", "x", "\u0000", "@u:localhost", "!r:localhost", "#a:localhost",
                                        "$e", [], [None], [1, "a"], {}, {"": None}, {"k": {}}, [[[[]]]])


def mutate_json(rng: random.Random, value: object, rounds: int = 1) -> object:
    """`value` (parsed JSON) with `rounds` nodes replaced, keys added or removed, at random."""
    for _ in range(rounds):
        value = _mutate_json_once(rng, value)
    return value


def _mutate_json_once(rng: random.Random, value: object) -> object:
    # collect (container, key) slots, the root included
    slots: list[tuple[Any, Any]] = [(None, None)]
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                slots.append((node, k))
                stack.append(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                slots.append((node, i))
                stack.append(v)
    container, key = rng.choice(slots)
    new = rng.choice(INTERESTING_JSON)
    new = copy.deepcopy(new)  # never share (and later mutate) the constants' own containers
    if container is None:
        return new
    action = rng.random()
    if isinstance(container, dict):
        if action < 0.15:
            del container[key]
        elif action < 0.3:
            container[rng.choice(("type", "content", "body", "msgtype", "user_id", "room_id", "preset", "limit",
                                  "state_key", "membership", "$x", ""))] = new
        else:
            container[key] = new
    elif isinstance(container, list):
        if action < 0.15:
            del container[key]
        elif action < 0.3:
            container.insert(key, new)
        else:
            container[key] = new
    return value


@dataclass
class Failure:
    """One input that broke a check: enough to reproduce it (hex input, seed, index)."""

    target: str
    seed: int
    index: int
    data: bytes
    error: str  # the exception line
    trace: str = ""

    def __str__(self) -> str:
        return (f"{self.target}: seed={self.seed} index={self.index} input={self.data.hex()}\n"
                f"  {self.error}\n{self.trace}")


@dataclass
class Result:
    target: str
    seed: int
    count: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    slowest: float = 0.0  # seconds, one input
    slowest_input: bytes = b""
    known: dict[str, int] = field(default_factory=dict)  # expected-elsewhere class -> inputs

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


class Mutator:
    """Seeded mutations of corpus inputs: `next()` returns one new input."""

    def __init__(self, seed: int, corpus: Sequence[bytes], max_len: int = 4096) -> None:
        if not corpus:
            raise ValueError("the corpus needs at least one input")
        self.rng = random.Random(seed)
        self.corpus = [bytes(c) for c in corpus]
        self.max_len = max_len
        self._ops: tuple[Callable[[bytearray], None], ...] = (
            self._flip_bit, self._flip_bit, self._set_byte, self._set_interesting_8,
            self._set_interesting_16, self._add_to_byte, self._insert_random, self._insert_chunk,
            self._delete_range, self._delete_range, self._duplicate_range, self._truncate,
            self._splice, self._swap_bytes,
        )

    def next(self) -> bytes:
        rng = self.rng
        data = bytearray(rng.choice(self.corpus))
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            rng.choice(self._ops)(data)
        if len(data) > self.max_len:
            del data[self.max_len:]
        return bytes(data)

    def mutate(self, data: bytes, rounds: int = 1) -> bytes:
        """`rounds` mutations of one given input (for the end-to-end streams)."""
        buf = bytearray(data)
        for _ in range(rounds):
            self.rng.choice(self._ops)(buf)
        return bytes(buf[:self.max_len])

    # -- the mutations (each edits the buffer in place; an empty buffer only grows) --------------

    def _pos(self, data: bytearray) -> int:
        return self.rng.randrange(len(data)) if data else 0

    def _flip_bit(self, data: bytearray) -> None:
        if data:
            data[self._pos(data)] ^= 1 << self.rng.randrange(8)

    def _set_byte(self, data: bytearray) -> None:
        if data:
            data[self._pos(data)] = self.rng.randrange(256)

    def _set_interesting_8(self, data: bytearray) -> None:
        if data:
            data[self._pos(data)] = self.rng.choice(INTERESTING_8)

    def _set_interesting_16(self, data: bytearray) -> None:
        if len(data) >= 2:
            i = self.rng.randrange(len(data) - 1)
            data[i:i + 2] = self.rng.choice(INTERESTING_16).to_bytes(2, "big")

    def _add_to_byte(self, data: bytearray) -> None:
        if data:
            i = self._pos(data)
            data[i] = (data[i] + self.rng.choice((-2, -1, 1, 2))) & 0xFF

    def _insert_random(self, data: bytearray) -> None:
        i = self.rng.randint(0, len(data))
        data[i:i] = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 8)))

    def _insert_chunk(self, data: bytearray) -> None:
        i = self.rng.randint(0, len(data))
        data[i:i] = self.rng.choice(INTERESTING_CHUNKS)

    def _delete_range(self, data: bytearray) -> None:
        if data:
            i = self._pos(data)
            del data[i:i + self.rng.randint(1, 8)]

    def _duplicate_range(self, data: bytearray) -> None:
        if data:
            i = self._pos(data)
            chunk = data[i:i + self.rng.randint(1, 16)]
            j = self.rng.randint(0, len(data))
            data[j:j] = chunk * self.rng.choice((1, 1, 2, 8))

    def _truncate(self, data: bytearray) -> None:
        if data:
            del data[self.rng.randrange(len(data)):]

    def _splice(self, data: bytearray) -> None:
        other = self.rng.choice(self.corpus)
        i = self.rng.randint(0, len(data))
        j = self.rng.randint(0, len(other))
        data[i:] = other[j:]

    def _swap_bytes(self, data: bytearray) -> None:
        if len(data) >= 2:
            i, j = self._pos(data), self._pos(data)
            data[i], data[j] = data[j], data[i]


def run(target: str, check: Callable[[bytes], None], corpus: Sequence[bytes], seed: int,
        count: int | None = None, seconds: float | None = None, max_failures: int = 20,
        slow: float = 1.0, include_corpus: bool = True,
        known: tuple[type[BaseException], ...] = ()) -> Result:
    """Feed `check` the corpus itself, then mutated inputs, until `count` inputs or `seconds` pass.

    `check` raises for a failure (its own AssertionError, or any exception the code under test
    must not raise). An input taking more than `slow` seconds counts as a failure (a hang in the
    making). Stops early after `max_failures`. An exception of a `known` type marks an input of a
    class that another change fixes: counted by message in `Result.known`, not a failure.
    """
    if count is None and seconds is None:
        raise ValueError("give a count or a time budget")
    result = Result(target, seed)
    mutator = Mutator(seed, corpus)
    inputs = list(corpus) if include_corpus else []
    started = time.perf_counter()
    deadline = started + seconds if seconds is not None else None
    clock = time.perf_counter
    i = 0
    while True:
        if count is not None and i >= count:
            break
        if deadline is not None and (i & 255) == 0 and clock() >= deadline:
            break
        data = inputs[i] if i < len(inputs) else mutator.next()
        t0 = clock()
        try:
            check(data)
        except known as exc:
            result.known[str(exc)] = result.known.get(str(exc), 0) + 1
        except Exception as exc:  # the point of a fuzzer: anything escaping the check is a finding
            result.failures.append(Failure(target, seed, i, data, f"{type(exc).__name__}: {exc}",
                                           traceback.format_exc(limit=-6)))
        took = clock() - t0
        if took > result.slowest:
            result.slowest = took
            result.slowest_input = data
        if took > slow:
            result.failures.append(Failure(target, seed, i, data, f"slow input: {took:.2f} s"))
        i += 1
        if len(result.failures) >= max_failures:
            break
    result.count = i
    result.seconds = clock() - started
    return result
