"""Application service registrations (the spec's Application Service API), pure: parsing and
checking registration files, namespace matching, which events an AS is interested in, and the
shape of a transaction. No socket, database or clock: service/appservice.py does the I/O.

The file format is Synapse's (so a bridge's docs apply as they are): YAML with `id`, `url`,
`as_token`, `hs_token`, `sender_localpart`, `namespaces` (`users`, `aliases`, `rooms`: lists of
{`exclusive`, `regex`}), `rate_limited`, `receive_ephemeral` (or MSC2409's
`de.sorunome.msc2409.push_ephemeral`), and MSC3202's `org.matrix.msc3202` (an AS that does its
users' encryption itself: device lists and key counts in its transactions, and the to-device
messages of its exclusive users taken off their /sync inboxes once it has them)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from .identifiers import is_valid_localpart

NAMESPACE_KINDS = ("users", "aliases", "rooms")


class RegistrationError(ValueError):
    """A registration file (or a set of them) the hub refuses, worded for its author."""


@dataclass(frozen=True, slots=True)
class Namespace:
    regex: str
    exclusive: bool
    pattern: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, value: str) -> bool:
        # Synapse uses re.match (anchored at the start only); bridges write ^...$ anyway.
        return self.pattern.match(value) is not None


@dataclass(frozen=True, slots=True)
class Registration:
    id: str
    url: str | None  # None: the AS takes no pushes (the spec allows `url: null`)
    as_token: str
    hs_token: str
    sender_localpart: str
    users: tuple[Namespace, ...] = ()
    aliases: tuple[Namespace, ...] = ()
    rooms: tuple[Namespace, ...] = ()
    rate_limited: bool = True
    receive_ephemeral: bool = False
    msc3202: bool = False  # `org.matrix.msc3202`: encrypted appservice (MSC3202 transaction extensions)
    source: str = ""  # the file it came from, named in errors

    def sender(self, server_name: str) -> str:
        return f"@{self.sender_localpart}:{server_name}"

    def namespaces(self, kind: str) -> tuple[Namespace, ...]:
        return {"users": self.users, "aliases": self.aliases, "rooms": self.rooms}[kind]

    def is_user_in_namespace(self, user_id: str, server_name: str) -> bool:
        """Whether the AS may act as `user_id`: its sender, or a match of a users namespace."""
        return user_id == self.sender(server_name) or any(ns.matches(user_id) for ns in self.users)

    def is_exclusive_user(self, user_id: str) -> bool:
        return any(ns.exclusive and ns.matches(user_id) for ns in self.users)

    def is_alias_in_namespace(self, alias: str) -> bool:
        return any(ns.matches(alias) for ns in self.aliases)

    def is_exclusive_alias(self, alias: str) -> bool:
        return any(ns.exclusive and ns.matches(alias) for ns in self.aliases)

    def is_room_in_namespace(self, room_id: str) -> bool:
        return any(ns.matches(room_id) for ns in self.rooms)

    def consumes_to_device(self, user_id: str, server_name: str) -> bool:
        """Whether a to-device message for `user_id`, once in a transaction this AS took, is done
        with (deleted from the device's /sync inbox): only for an encrypted AS (MSC3202), and only
        for users it alone speaks for (an exclusive namespace, or its sender), whose devices it runs.
        A bridge whose bot still syncs for its keys keeps getting them through /sync."""
        return self.msc3202 and (user_id == self.sender(server_name) or self.is_exclusive_user(user_id))


def _namespaces(raw: Any, kind: str, where: str) -> tuple[Namespace, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RegistrationError(f"{where}: namespaces.{kind} must be a list of {{exclusive, regex}}")
    out: list[Namespace] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise RegistrationError(f"{where}: namespaces.{kind}[{i}] must be a mapping with 'exclusive' and 'regex'")
        regex, exclusive = entry.get("regex"), entry.get("exclusive", False)
        if not isinstance(regex, str) or not regex:
            raise RegistrationError(f"{where}: namespaces.{kind}[{i}].regex must be a non-empty string")
        if not isinstance(exclusive, bool):
            raise RegistrationError(f"{where}: namespaces.{kind}[{i}].exclusive must be true or false")
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise RegistrationError(f"{where}: namespaces.{kind}[{i}].regex {regex!r} is not a valid "
                                    f"regular expression: {exc}") from None
        out.append(Namespace(regex, exclusive, pattern))
    return tuple(out)


def _string(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise RegistrationError(f"{where}: '{key}' is required and must be a non-empty string")
    return value


def parse_registration(data: Any, source: str) -> Registration:
    """A registration from its decoded YAML (a mapping); RegistrationError naming the problem."""
    if not isinstance(data, dict):
        raise RegistrationError(f"{source}: a registration file is a YAML mapping (id, url, as_token, ...)")
    reg_id = _string(data, "id", source)
    where = f"{source} (appservice {reg_id!r})"
    url = data.get("url")
    if url is not None and (not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url)):
        raise RegistrationError(f"{where}: 'url' must be an http(s) URL or null, not {url!r}")
    as_token, hs_token = _string(data, "as_token", where), _string(data, "hs_token", where)
    if as_token == hs_token:
        raise RegistrationError(f"{where}: as_token and hs_token must differ")
    sender = _string(data, "sender_localpart", where)
    if not is_valid_localpart(sender):
        raise RegistrationError(f"{where}: sender_localpart {sender!r} is not a valid user localpart")
    raw_ns = data.get("namespaces", {})
    if raw_ns is None:
        raw_ns = {}
    if not isinstance(raw_ns, dict):
        raise RegistrationError(f"{where}: 'namespaces' must be a mapping of users, aliases, rooms")
    unknown = set(raw_ns) - set(NAMESPACE_KINDS)
    if unknown:
        raise RegistrationError(f"{where}: unknown namespace kind(s) {', '.join(sorted(unknown))} "
                                f"(known: users, aliases, rooms)")
    flags = {}
    for key in ("rate_limited", "receive_ephemeral", "de.sorunome.msc2409.push_ephemeral", "org.matrix.msc3202"):
        value = data.get(key)
        if value is not None and not isinstance(value, bool):
            raise RegistrationError(f"{where}: '{key}' must be true or false")
        flags[key] = value
    return Registration(
        id=reg_id, url=url.rstrip("/") if url else None, as_token=as_token, hs_token=hs_token,
        sender_localpart=sender,
        users=_namespaces(raw_ns.get("users"), "users", where),
        aliases=_namespaces(raw_ns.get("aliases"), "aliases", where),
        rooms=_namespaces(raw_ns.get("rooms"), "rooms", where),
        rate_limited=flags["rate_limited"] is not False,
        receive_ephemeral=bool(flags["receive_ephemeral"] or flags["de.sorunome.msc2409.push_ephemeral"]),
        msc3202=bool(flags["org.matrix.msc3202"]),
        source=source)


def parse_registration_yaml(text: str, source: str) -> Registration:
    import yaml  # pure (no I/O): the text is read by the caller

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistrationError(f"{source}: not valid YAML: {exc}") from None
    return parse_registration(data, source)


_META_FILL = [(r"\.\*", ""), (r"\.\+", "x"), (r"\[[^\]]*\][*+?]?", "x"), (r"\\d[*+]?", "0"), (r"\\w[*+]?", "x"),
              (r"\\(.)", r"\1"), (r"[\^$]", ""), (r"\(\?[:=!][^)]*\)", ""), (r"[()]", "")]


def _witness(regex: str) -> str:
    """A string the regex (likely) matches, made by filling its wildcards: the overlap check's
    probe. Regular-expression overlap is undecidable cheaply; this catches the real mistakes (the
    same regex twice, `@bridge_.*` against `@bridge_tg_.*`) without false alarms."""
    out = regex
    for pattern, repl in _META_FILL:
        out = re.sub(pattern, repl, out)
    return out


_LITERAL = re.compile(r"(?:\\[^A-Za-z0-9]|[^\\.^$*+?{}\[\]|()])*")


def _affixes(regex: str) -> tuple[str, str]:
    """The literal text every match starts with and (when anchored with $) ends with."""
    body = regex[1:] if regex.startswith("^") else regex
    prefix = re.sub(r"\\(.)", r"\1", _LITERAL.match(body).group())  # type: ignore[union-attr]
    if not body.endswith("$") or body.endswith("\\$"):
        return prefix, ""
    tail = body[:-1]
    i = len(tail)
    while i > 0 and _LITERAL.fullmatch(tail[i - 1:]):
        i -= 1
    return prefix, re.sub(r"\\(.)", r"\1", tail[i:])


def _overlap(a: Namespace, b: Namespace) -> bool:
    """Whether two namespaces can match one id: the same regex, one's probe string matching the
    other, or `@prefix_.*`-style patterns whose literal start and end agree."""
    if a.regex == b.regex or a.matches(_witness(b.regex)) or b.matches(_witness(a.regex)):
        return True
    (pa, sa), (pb, sb) = _affixes(a.regex), _affixes(b.regex)
    return (pa.startswith(pb) or pb.startswith(pa)) and (sa.endswith(sb) or sb.endswith(sa))


def check_registrations(regs: Iterable[Registration], server_name: str) -> list[Registration]:
    """The set the hub runs with; RegistrationError for a duplicate id or token, or a namespace
    that overlaps another AS's exclusive one (each AS must own its exclusive ids alone)."""
    regs = list(regs)
    seen: dict[str, Registration] = {}
    tokens: dict[str, Registration] = {}
    senders: dict[str, Registration] = {}
    for reg in regs:
        if reg.id in seen:
            raise RegistrationError(f"{reg.source}: appservice id {reg.id!r} is already used by {seen[reg.id].source}")
        seen[reg.id] = reg
        for token in (reg.as_token, reg.hs_token):
            if token in tokens:
                raise RegistrationError(f"{reg.source}: appservice {reg.id!r} uses a token that appservice "
                                        f"{tokens[token].id!r} ({tokens[token].source}) also uses")
            tokens[token] = reg
        if reg.sender_localpart in senders:
            raise RegistrationError(f"{reg.source}: appservice {reg.id!r} has the sender_localpart of "
                                    f"appservice {senders[reg.sender_localpart].id!r}")
        senders[reg.sender_localpart] = reg
    for i, a in enumerate(regs):
        for b in regs[i + 1:]:
            for kind in NAMESPACE_KINDS:
                for na in a.namespaces(kind):
                    for nb in b.namespaces(kind):
                        if (na.exclusive or nb.exclusive) and _overlap(na, nb):
                            owner, other = (a, b) if na.exclusive else (b, a)
                            raise RegistrationError(
                                f"{other.source}: the {kind} namespace {(nb if owner is a else na).regex!r} of "
                                f"appservice {other.id!r} overlaps the exclusive namespace "
                                f"{(na if owner is a else nb).regex!r} of appservice {owner.id!r}")
            for reg, other in ((a, b), (b, a)):
                if other.is_exclusive_user(reg.sender(server_name)):
                    raise RegistrationError(f"{reg.source}: the sender of appservice {reg.id!r} is in the exclusive "
                                            f"users namespace of appservice {other.id!r}")
    return regs


def interested(reg: Registration, event: Mapping[str, Any], server_name: str, member_rooms: set[str],
               alias_rooms: set[str], owns_user: Callable[[str], bool] | None = None) -> bool:
    """Whether `reg` gets `event` (a client-format event dict or its PDU): its sender or (for a
    member event) its target is the AS's, its room is in the rooms namespace, has an alias in the
    aliases namespace (`alias_rooms`), or one of the AS's users is in it (`member_rooms`).
    `owns_user`: the caller's cached form of `reg.is_user_in_namespace` (the hot path's)."""
    room_id = event.get("room_id", "")
    if room_id in member_rooms or room_id in alias_rooms:
        return True
    owns = owns_user or (lambda user_id: reg.is_user_in_namespace(user_id, server_name))
    if owns(event.get("sender", "")):
        return True
    if event.get("type") == "m.room.member":
        target = event.get("state_key")
        if isinstance(target, str) and owns(target):
            return True
    return bool(reg.rooms) and reg.is_room_in_namespace(room_id)


# The keys of a transaction's extensions, as Synapse sends them and mautrix-python reads them
# (it tries the stable name first, then the unstable one). To-device messages kept MSC2409's prefix
# when they moved to MSC4203; MSC3202's fields are unstable only.
TO_DEVICE_KEY = "de.sorunome.msc2409.to_device"
DEVICE_LISTS_KEY = "org.matrix.msc3202.device_lists"
OTK_COUNT_KEY = "org.matrix.msc3202.device_one_time_keys_count"
OTK_COUNT_KEY_OLD = "org.matrix.msc3202.device_one_time_key_counts"  # Synapse sends both spellings
FALLBACK_KEY = "org.matrix.msc3202.device_unused_fallback_key_types"


@dataclass(frozen=True, slots=True)
class Extensions:
    """What a transaction carries besides room events; empty parts are left out of the body."""

    ephemeral: list[dict[str, Any]] = field(default_factory=list)
    to_device: list[dict[str, Any]] = field(default_factory=list)
    device_lists: tuple[list[str], list[str]] = ([], [])  # (changed, left)
    otk_counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    fallback_types: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def to_device_entry(user_id: str, device_id: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """A to-device message (type, sender, content) as an AS gets it: MSC2409 names the recipient,
    since one transaction carries the messages of all its users' devices."""
    return {**message, "to_user_id": user_id, "to_device_id": device_id}


def key_counts(devices: Iterable[tuple[str, str]], counts: Callable[[str, str], dict[str, int]],
               fallback: Callable[[str, str], list[str]]) -> tuple[dict[str, dict[str, dict[str, int]]],
                                                                   dict[str, dict[str, list[str]]]]:
    """MSC3202's per-user, per-device one-time key counts and unused fallback key types (the
    /sync fields, keyed by user then device) of `devices`."""
    otk: dict[str, dict[str, dict[str, int]]] = {}
    unused: dict[str, dict[str, list[str]]] = {}
    for user_id, device_id in sorted(set(devices)):
        otk.setdefault(user_id, {})[device_id] = counts(user_id, device_id)
        unused.setdefault(user_id, {})[device_id] = fallback(user_id, device_id)
    return otk, unused


def device_list_summary(rows: Iterable[tuple[str, str | None, str]], shares_room: Callable[[str], bool],
                        owns_user: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """MSC3202's (changed, left) for an AS from rows of the device-list stream (user, recipient or
    None for everyone sharing a room with the user, "changed"/"left"), oldest first: a user's
    devices matter to the AS when it shares a room with one of the AS's users (`shares_room`), or
    is one of them; a row for one recipient counts when the recipient is the AS's. The newest
    word about a user wins; a user who left a room with one of the AS's users is `left` only when
    they share no room with any other of them (the AS keeps tracking their devices otherwise)."""
    latest: dict[str, str] = {}
    for user_id, recipient, kind in rows:
        if recipient is None:
            if owns_user(user_id) or shares_room(user_id):
                latest[user_id] = "changed"
        elif owns_user(recipient):
            latest[user_id] = kind
    return (sorted(u for u, k in latest.items() if k == "changed"),
            sorted(u for u, k in latest.items() if k == "left" and not owns_user(u) and not shares_room(u)))


def transaction_body(events: list[dict[str, Any]], ephemeral: list[dict[str, Any]] | None = None,
                     extensions: Extensions | None = None) -> dict[str, Any]:
    """The body of PUT /_matrix/app/v1/transactions/{txnId}: the events in order; ephemeral
    ones (typing, receipts, presence) under both the stable and MSC2409's key (mautrix reads
    either); to-device messages, device lists and key counts (MSC2409/MSC3202) when there are any."""
    body: dict[str, Any] = {"events": events}
    ext = extensions or Extensions()
    ephemeral = [*(ephemeral or []), *ext.ephemeral]
    if ephemeral:
        body["ephemeral"] = ephemeral
        body["de.sorunome.msc2409.ephemeral"] = ephemeral
    if ext.to_device:
        body[TO_DEVICE_KEY] = ext.to_device
    changed, left = ext.device_lists
    if changed or left:
        body[DEVICE_LISTS_KEY] = {"changed": changed, "left": left}
    if ext.otk_counts:
        body[OTK_COUNT_KEY] = body[OTK_COUNT_KEY_OLD] = ext.otk_counts
    if ext.fallback_types:
        body[FALLBACK_KEY] = ext.fallback_types
    return body


# A transaction holds at most this many events (Synapse's 100): an AS back after an outage gets
# its backlog in a few large PUTs, not thousands of small ones.
MAX_TRANSACTION_EVENTS = 100
FIRST_RETRY_S = 0.25
MAX_BACKOFF_S = 60.0


def backoff_s(failures: int) -> float:
    """Seconds before the next try after `failures` failed tries of a transaction in a row:
    quick at first (an AS restarting is back within a second), at most a minute."""
    return min(MAX_BACKOFF_S, FIRST_RETRY_S * 2 ** max(0, min(failures - 1, 20)))
