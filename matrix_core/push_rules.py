"""Push rules: the spec's server-default rule set, a user's rules layered on it, validation of
rules a client uploads, and the evaluation of one event for one user. Pure: data in, data out.

The defaults follow the spec's "Predefined rules" in the spec's order, plus the deprecated legacy
mention rules (`.m.rule.contains_display_name`, `.m.rule.roomnotif`, `.m.rule.contains_user_name`)
at the places Synapse keeps them: older clients still send mentions only in the body. As the spec
asks, the legacy ones do not apply to an event that carries `m.mentions` (the sender's client
said exactly whom it mentions).

Order of evaluation: override, content, room, sender, underride. Inside a kind the user's own
rules come before the server-default ones, except `.m.rule.master`, which comes before all.

Room-version-aware: `sender_notification_permission` reads the sender's power level the way the
room's version defines it (auth_rules.get_user_power_level: v12's creators have infinite power;
string levels only where the version allows them), and the `notifications` levels likewise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from . import auth_rules
from .events import Event

KINDS = ("override", "content", "room", "sender", "underride")
LEGACY_MENTION_RULES = frozenset({".m.rule.contains_display_name", ".m.rule.roomnotif",
                                  ".m.rule.contains_user_name"})
ROOM_NOTIFICATION_DEFAULT = 50  # power levels' `notifications.room` when absent
MAX_RULE_ID_BYTES = 255
MAX_RULES_PER_USER = 500  # what a user may create in all (bounded memory on a small hub)

_NOTIFY = "notify"
_SOUND_DEFAULT = {"set_tweak": "sound", "value": "default"}
_SOUND_RING = {"set_tweak": "sound", "value": "ring"}
_HIGHLIGHT = {"set_tweak": "highlight"}
_NO_HIGHLIGHT = {"set_tweak": "highlight", "value": False}

StateMap = Mapping[tuple[str, str], Event]


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def default_rules(user_id: str) -> dict[str, list[dict[str, Any]]]:
    """The server-default rules for `user_id`, per kind, in the spec's order, as JSON."""
    localpart = user_id[1:].split(":", 1)[0]

    def rule(rule_id: str, conditions: list[dict[str, Any]], actions: list[Any], enabled: bool = True,
             ) -> dict[str, Any]:
        return {"rule_id": rule_id, "default": True, "enabled": enabled, "conditions": conditions,
                "actions": actions}

    override = [
        rule(".m.rule.master", [], [], enabled=False),
        rule(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
        rule(".m.rule.invite_for_me", [_match("type", "m.room.member"), _match("content.membership", "invite"),
                                       _match("state_key", user_id)],
             [_NOTIFY, _SOUND_DEFAULT, _NO_HIGHLIGHT]),
        rule(".m.rule.member_event", [_match("type", "m.room.member")], []),
        rule(".m.rule.is_user_mention",
             [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id}],
             [_NOTIFY, _SOUND_DEFAULT, _HIGHLIGHT]),
        rule(".m.rule.contains_display_name", [{"kind": "contains_display_name"}],
             [_NOTIFY, _SOUND_DEFAULT, _HIGHLIGHT]),
        rule(".m.rule.is_room_mention",
             [{"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
              {"kind": "sender_notification_permission", "key": "room"}],
             [_NOTIFY, _HIGHLIGHT]),
        rule(".m.rule.roomnotif",
             [{"kind": "sender_notification_permission", "key": "room"}, _match("content.body", "@room")],
             [_NOTIFY, _HIGHLIGHT]),
        rule(".m.rule.tombstone", [_match("type", "m.room.tombstone"), _match("state_key", "")],
             [_NOTIFY, _HIGHLIGHT]),
        rule(".m.rule.reaction", [_match("type", "m.reaction")], []),
        rule(".m.rule.room.server_acl", [_match("type", "m.room.server_acl"), _match("state_key", "")], []),
        rule(".m.rule.suppress_edits",
             [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}], []),
    ]
    content = [{"rule_id": ".m.rule.contains_user_name", "default": True, "enabled": True,
                "pattern": localpart, "actions": [_NOTIFY, _SOUND_DEFAULT, _HIGHLIGHT]}]
    underride = [
        rule(".m.rule.call", [_match("type", "m.call.invite")], [_NOTIFY, _SOUND_RING, _NO_HIGHLIGHT]),
        rule(".m.rule.encrypted_room_one_to_one",
             [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
             [_NOTIFY, _SOUND_DEFAULT, _NO_HIGHLIGHT]),
        rule(".m.rule.room_one_to_one",
             [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
             [_NOTIFY, _SOUND_DEFAULT, _NO_HIGHLIGHT]),
        rule(".m.rule.message", [_match("type", "m.room.message")], [_NOTIFY, _NO_HIGHLIGHT]),
        rule(".m.rule.encrypted", [_match("type", "m.room.encrypted")], [_NOTIFY, _NO_HIGHLIGHT]),
    ]
    return {"override": override, "content": content, "room": [], "sender": [], "underride": underride}


def default_rule_ids(user_id: str = "@u:x") -> dict[str, set[str]]:
    return {kind: {r["rule_id"] for r in rules} for kind, rules in default_rules(user_id).items()}


DEFAULT_RULE_IDS = default_rule_ids()


# --- the user's rules: shape and validation --------------------------------------------------------

class RuleError(ValueError):
    """A rule a client uploaded is not acceptable; `code` is the Matrix errcode to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise RuleError("M_INVALID_PARAM", f"Unknown push rule kind {kind[:40]!r}")
    return kind


def check_new_rule_id(kind: str, rule_id: str) -> str:
    """A rule id a user may create: not empty, no '/' or '\\', not starting with '.' (reserved for
    the server's rules); a room rule's id is a room id, a sender rule's a user id."""
    if not rule_id or len(rule_id.encode()) > MAX_RULE_ID_BYTES:
        raise RuleError("M_INVALID_PARAM", "rule_id must be 1 to 255 bytes")
    if "/" in rule_id or "\\" in rule_id:
        raise RuleError("M_INVALID_PARAM", "rule_id may not contain '/' or '\\'")
    if rule_id.startswith("."):
        raise RuleError("M_INVALID_PARAM", "rule_ids starting with '.' are reserved for server-default rules")
    if not rule_id.isprintable():
        raise RuleError("M_INVALID_PARAM", "rule_id may not contain control characters")
    if kind == "room" and not rule_id.startswith("!"):
        raise RuleError("M_INVALID_PARAM", "a room rule's rule_id is a room id")
    if kind == "sender" and not auth_rules.is_valid_user_id(rule_id):
        raise RuleError("M_INVALID_PARAM", "a sender rule's rule_id is a user id")
    return rule_id


def check_actions(actions: Any) -> list[Any]:
    """`actions`: a list of "notify", the deprecated no-ops "dont_notify" / "coalesce", or
    {"set_tweak": <string>, ...} objects."""
    if not isinstance(actions, list):
        raise RuleError("M_BAD_JSON", "'actions' must be a list")
    for action in actions:
        if isinstance(action, str):
            if action not in ("notify", "dont_notify", "coalesce"):
                raise RuleError("M_BAD_JSON", f"Unknown action {action[:40]!r}")
        elif isinstance(action, dict):
            if not isinstance(action.get("set_tweak"), str):
                raise RuleError("M_BAD_JSON", "A tweak action needs a string 'set_tweak'")
        else:
            raise RuleError("M_BAD_JSON", "Each action is a string or an object")
    return actions


_SCALAR = (str, int, bool, type(None))


def check_conditions(conditions: Any) -> list[dict[str, Any]]:
    """`conditions`: a list of objects with a string `kind`; the known kinds must carry their
    fields with the right types. Unknown kinds are kept (the spec: they never match)."""
    if not isinstance(conditions, list):
        raise RuleError("M_BAD_JSON", "'conditions' must be a list")
    for cond in conditions:
        if not isinstance(cond, dict) or not isinstance(cond.get("kind"), str):
            raise RuleError("M_BAD_JSON", "Each condition is an object with a string 'kind'")
        kind = cond["kind"]
        if kind == "event_match":
            if not isinstance(cond.get("key"), str) or not isinstance(cond.get("pattern"), str):
                raise RuleError("M_BAD_JSON", "event_match needs string 'key' and 'pattern'")
        elif kind in ("event_property_is", "event_property_contains"):
            if not isinstance(cond.get("key"), str) or "value" not in cond or not isinstance(cond["value"], _SCALAR):
                raise RuleError("M_BAD_JSON", f"{kind} needs a string 'key' and a scalar 'value'")
        elif kind == "room_member_count":
            if not isinstance(cond.get("is"), str) or parse_member_count(cond["is"]) is None:
                raise RuleError("M_BAD_JSON", "room_member_count needs 'is' like '2', '==2', '<10', '>=3'")
        elif kind == "sender_notification_permission":
            if not isinstance(cond.get("key"), str):
                raise RuleError("M_BAD_JSON", "sender_notification_permission needs a string 'key'")
    return conditions


def new_rule(kind: str, rule_id: str, body: Any) -> dict[str, Any]:
    """The stored form of a rule a user PUTs: {rule_id, actions, conditions | pattern}."""
    if not isinstance(body, dict):
        raise RuleError("M_BAD_JSON", "The body must be a JSON object")
    rule: dict[str, Any] = {"rule_id": rule_id, "actions": check_actions(body.get("actions"))}
    if kind == "content":
        if not isinstance(body.get("pattern"), str) or not body["pattern"]:
            raise RuleError("M_BAD_JSON", "A content rule needs a non-empty string 'pattern'")
        rule["pattern"] = body["pattern"]
    elif kind in ("override", "underride"):
        rule["conditions"] = check_conditions(body.get("conditions", []))
    return rule


def parse_member_count(spec: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(==|<=|>=|<|>)?([0-9]{1,9})", spec)
    return None if m is None else (m.group(1) or "==", int(m.group(2)))


# --- the layered rule set --------------------------------------------------------------------------

@dataclass(slots=True)
class UserRules:
    """What a user changed: their own rules per kind (in priority order) and, for server-default
    rules, the enabled flag and actions they set."""
    custom: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    enabled: dict[str, bool] = field(default_factory=dict)      # "kind/rule_id" -> enabled
    actions: dict[str, list[Any]] = field(default_factory=dict)  # "kind/rule_id" -> actions (defaults only)

    def count(self) -> int:
        return sum(len(v) for v in self.custom.values())


def _client_shape(kind: str, rule: dict[str, Any], default: bool, enabled: bool,
                  actions: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"rule_id": rule["rule_id"], "default": default, "enabled": enabled, "actions": actions}
    if kind == "content":
        out["pattern"] = rule["pattern"]
    elif kind in ("override", "underride"):
        out["conditions"] = rule["conditions"]
    return out


def ruleset(user_id: str, user: UserRules) -> dict[str, list[dict[str, Any]]]:
    """The user's whole rule set per kind, in evaluation order, in the shape clients get
    (GET /pushrules/: `global`)."""
    defaults = default_rules(user_id)
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        rules: list[dict[str, Any]] = []
        base = defaults[kind]
        if kind == "override" and base and base[0]["rule_id"] == ".m.rule.master":
            head, base = base[:1], base[1:]
        else:
            head = []
        for r in head:
            rules.append(_default_shape(kind, r, user))
        for r in user.custom.get(kind, []):
            rules.append(_client_shape(kind, r, False, user.enabled.get(f"{kind}/{r['rule_id']}", True),
                                       r["actions"]))
        for r in base:
            rules.append(_default_shape(kind, r, user))
        out[kind] = rules
    return out


def _default_shape(kind: str, r: dict[str, Any], user: UserRules) -> dict[str, Any]:
    key = f"{kind}/{r['rule_id']}"
    return _client_shape(kind, r, True, user.enabled.get(key, r["enabled"]), user.actions.get(key, r["actions"]))


def find_rule(rules: dict[str, list[dict[str, Any]]], kind: str, rule_id: str) -> dict[str, Any] | None:
    return next((r for r in rules.get(kind, []) if r["rule_id"] == rule_id), None)


# --- evaluation ------------------------------------------------------------------------------------

def split_key(key: str) -> list[str]:
    """A dotted key into its parts: '.' separates, '\\.' is a literal dot, '\\\\' a backslash;
    any other backslash stays as it is (the spec's escaping for event_property_* and event_match)."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            cur.append(key[i + 1])
            i += 2
            continue
        if ch == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


_MISSING = object()


def lookup(doc: Mapping[str, Any], parts: list[str]) -> Any:
    if len(parts) == 1:
        return doc.get(parts[0], _MISSING)
    value: Any = doc
    for part in parts:
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def glob_regex(pattern: str, words: bool) -> re.Pattern[str]:
    """A glob ('*' any run, '?' one character) as a case-insensitive regex: the whole value, or
    (content.body) a run of words: the pattern bounded by the value's edges, a word boundary or a
    non-word character on both sides, so 'alice' matches 'hi alice!' but not 'malice'."""
    chunks = []
    for run, wild in re.findall(r"([^?*]*)([?*]*)", pattern):
        chunks.append(re.escape(run))
        if wild:
            q = wild.count("?")
            chunks.append(f".{{{q},}}" if "*" in wild else f".{{{q}}}")
    body = "".join(chunks)
    text = rf"(?:^|\b|\W){body}(?:\b|\W|$)" if words else rf"\A{body}\Z"
    return re.compile(text, re.IGNORECASE | re.DOTALL)


def member_count_matches(spec: str, count: int) -> bool:
    parsed = parse_member_count(spec)
    if parsed is None:
        return False
    op, n = parsed
    return {"==": count == n, "<": count < n, ">": count > n, "<=": count <= n, ">=": count >= n}[op]


def _same_scalar(a: Any, b: Any) -> bool:
    """Equality of JSON scalars where True is not 1 (Python's bool is an int)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


class RoomFacts:
    """What conditions need of the room, computed once per (room state, user) and per sender on
    demand: the joined member count, the user's display name, power levels."""

    def __init__(self, state: StateMap, user_id: str) -> None:
        self.state = state
        self.user_id = user_id
        self._count: int | None = None
        self._levels: dict[str, int | float] = {}
        self._display_name: str | None | object = _MISSING

    @property
    def member_count(self) -> int:
        if self._count is None:
            self._count = sum(1 for (t, _), ev in self.state.items()
                              if t == "m.room.member" and ev.membership == "join")
        return self._count

    @property
    def display_name(self) -> str | None:
        if self._display_name is _MISSING:
            member = self.state.get(("m.room.member", self.user_id))
            name = member.content.get("displayname") if member is not None else None
            self._display_name = name if isinstance(name, str) and name.strip() else None
        return self._display_name  # type: ignore[return-value]

    def power_level(self, user_id: str) -> int | float:
        level = self._levels.get(user_id)
        if level is None:
            level = self._levels[user_id] = auth_rules.get_user_power_level(user_id, self.state)
        return level

    def notification_level(self, key: str) -> int | float:
        pl = self.state.get(auth_rules.POWER_LEVELS_KEY)
        default = ROOM_NOTIFICATION_DEFAULT if key == "room" else None
        if pl is None:
            return default if default is not None else float("inf")
        levels = pl.content.get("notifications")
        raw = levels.get(key) if isinstance(levels, dict) else None
        parsed = auth_rules._parse_level(raw, pl.room_version) if raw is not None else None
        if parsed is not None:
            return parsed
        return default if default is not None else float("inf")


Condition = Callable[[Mapping[str, Any], RoomFacts], bool]


def _compile_condition(cond: Mapping[str, Any]) -> Condition:
    kind = cond.get("kind")
    if kind == "event_match":
        key, pattern = cond.get("key"), cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return _never
        parts = split_key(key)
        words = key == "content.body"
        if not words and "*" not in pattern and "?" not in pattern:
            lowered = pattern.lower()

            def exact(doc: Mapping[str, Any], facts: RoomFacts) -> bool:
                value = lookup(doc, parts)
                return isinstance(value, str) and value.lower() == lowered
            return exact
        regex = glob_regex(pattern, words)
        if words and "*" not in pattern and "?" not in pattern:
            needle = pattern.lower()

            def word(doc: Mapping[str, Any], facts: RoomFacts) -> bool:
                value = lookup(doc, parts)  # a substring test first: most bodies do not contain it
                return isinstance(value, str) and needle in value.lower() and regex.search(value) is not None
            return word

        def glob(doc: Mapping[str, Any], facts: RoomFacts) -> bool:
            value = lookup(doc, parts)
            return isinstance(value, str) and regex.search(value) is not None
        return glob
    if kind in ("event_property_is", "event_property_contains"):
        key, want = cond.get("key"), cond.get("value", _MISSING)
        if not isinstance(key, str) or want is _MISSING or not isinstance(want, _SCALAR):
            return _never
        parts = split_key(key)
        if kind == "event_property_is":
            def prop_is(doc: Mapping[str, Any], facts: RoomFacts) -> bool:
                value = lookup(doc, parts)
                return value is not _MISSING and isinstance(value, _SCALAR) and _same_scalar(value, want)
            return prop_is

        def prop_contains(doc: Mapping[str, Any], facts: RoomFacts) -> bool:
            value = lookup(doc, parts)
            return isinstance(value, list) and any(isinstance(v, _SCALAR) and _same_scalar(v, want) for v in value)
        return prop_contains
    if kind == "contains_display_name":
        def display_name(doc: Mapping[str, Any], facts: RoomFacts) -> bool:
            name = facts.display_name
            body = lookup(doc, ["content", "body"])
            return name is not None and isinstance(body, str) and _word_match(name, body)
        return display_name
    if kind == "room_member_count":
        spec = cond.get("is")
        if not isinstance(spec, str) or parse_member_count(spec) is None:
            return _never
        return lambda doc, facts: member_count_matches(spec, facts.member_count)
    if kind == "sender_notification_permission":
        key = cond.get("key")
        if not isinstance(key, str):
            return _never
        return lambda doc, facts: facts.power_level(doc.get("sender", "")) >= facts.notification_level(key)
    return _never  # unknown kinds never match (the spec)


def _never(doc: Mapping[str, Any], facts: RoomFacts) -> bool:
    return False


_WORD_CACHE: dict[str, re.Pattern[str]] = {}


def _word_match(word: str, body: str) -> bool:
    if word.lower() not in body.lower():
        return False
    regex = _WORD_CACHE.get(word)
    if regex is None:
        if len(_WORD_CACHE) > 1024:
            _WORD_CACHE.clear()
        regex = _WORD_CACHE[word] = re.compile(rf"(?:^|\b|\W){re.escape(word)}(?:\b|\W|$)", re.IGNORECASE)
    return regex.search(body) is not None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    kind: str
    rule_id: str
    conditions: tuple[Condition, ...]
    actions: tuple[Any, ...]
    legacy_mention: bool
    # The event type this rule needs (lowercased), when one of its conditions is an exact
    # event_match on `type`: checked before any condition runs (most rules skip most events so).
    type_gate: str | None = None


# Conditions run cheapest first (all must hold; their order does not change the outcome).
_COST = {"event_match": 0, "event_property_is": 1, "event_property_contains": 1, "contains_display_name": 2,
         "room_member_count": 3, "sender_notification_permission": 4}


def _type_gate(conditions: list[Mapping[str, Any]]) -> str | None:
    for cond in conditions:
        pattern = cond.get("pattern")
        if cond.get("kind") == "event_match" and cond.get("key") == "type" and isinstance(pattern, str) \
                and "*" not in pattern and "?" not in pattern:
            return pattern.lower()
    return None


def _conditions_of(kind: str, rule: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if kind == "content":
        return [_match("content.body", rule["pattern"])]
    if kind == "room":
        return [_match("room_id", rule["rule_id"])]
    if kind == "sender":
        return [_match("sender", rule["rule_id"])]
    return list(rule.get("conditions", []))


class Evaluator:
    """A user's enabled rules, compiled once (globs to regexes), in evaluation order."""

    def __init__(self, rules: dict[str, list[dict[str, Any]]]) -> None:
        compiled: list[CompiledRule] = []
        for kind in KINDS:
            for rule in rules.get(kind, []):
                if not rule.get("enabled", True):
                    continue
                raw = sorted(_conditions_of(kind, rule), key=lambda c: _COST.get(str(c.get("kind")), 5))
                conds = tuple(_compile_condition(c) for c in raw)
                compiled.append(CompiledRule(kind, rule["rule_id"], conds, tuple(rule.get("actions", [])),
                                             rule.get("default", False) and rule["rule_id"] in LEGACY_MENTION_RULES,
                                             _type_gate(raw)))
        self.rules = tuple(compiled)

    def matching_rule(self, event: Mapping[str, Any], facts: RoomFacts) -> CompiledRule | None:
        """The first rule whose conditions all hold for the event (a PDU-shaped dict)."""
        content = event.get("content")
        has_mentions = isinstance(content, dict) and "m.mentions" in content
        etype = event.get("type")
        etype = etype.lower() if isinstance(etype, str) else None
        for rule in self.rules:
            if rule.type_gate is not None and rule.type_gate != etype:
                continue
            if rule.legacy_mention and has_mentions:
                continue
            for cond in rule.conditions:
                if not cond(event, facts):
                    break
            else:
                return rule
        return None

    def actions(self, event: Mapping[str, Any], facts: RoomFacts) -> list[Any]:
        rule = self.matching_rule(event, facts)
        return list(rule.actions) if rule is not None else []


def notifies(actions: Iterable[Any]) -> tuple[bool, bool]:
    """(notify, highlight) of a rule's actions: notify iff "notify" is among them; highlight iff
    a `highlight` tweak has no value or the value true."""
    notify = highlight = False
    for action in actions:
        if action == "notify":
            notify = True
        elif isinstance(action, dict) and action.get("set_tweak") == "highlight":
            highlight = action.get("value", True) is True
    return notify, notify and highlight


def thread_of(event: Mapping[str, Any]) -> str:
    """The thread an event counts in: the thread root's id for `m.thread` relations, else "main"."""
    content = event.get("content")
    rel = content.get("m.relates_to") if isinstance(content, dict) else None
    if isinstance(rel, dict) and rel.get("rel_type") == "m.thread" and isinstance(rel.get("event_id"), str):
        return rel["event_id"]
    return "main"


def related_parent(event: Mapping[str, Any]) -> str | None:
    """The event an edit, reaction or reference relates to (not a thread reply's root): such an
    event is in its parent's thread (Synapse's get_thread_id), which only the store knows."""
    content = event.get("content")
    rel = content.get("m.relates_to") if isinstance(content, dict) else None
    if isinstance(rel, dict) and isinstance(rel.get("rel_type"), str) and rel.get("rel_type") != "m.thread" \
            and isinstance(rel.get("event_id"), str):
        return rel["event_id"]
    return None
