"""Agent definitions from text: the lark grammar in ``agent.lark`` gives the shape,
the checks here the meaning. Every error is a :class:`ConfigError` naming the line and
column, with the offending line and a caret under the spot."""

from __future__ import annotations

import functools
import json
import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from .. import policy
from ..errors import ConfigError
from ..tiers import SecurityTier
from .model import CAPABILITIES, Agent, Emit, Ref, Run, SandboxMode, Trigger, summarize

if TYPE_CHECKING:
    from ..orchestrator import SandboxOrchestrator

GRAMMAR = Path(__file__).with_name("agent.lark")

#: Action -> (positional parameters, whether it takes ``needs:``).
ACTIONS: dict[str, tuple[tuple[str, ...], bool]] = {
    "execute_native": (("command",), True),
    "execute": (("command",), True),
    "run_code": (("language", "code"), True),
    "emit": (("name", "value"), False),
}
SECURITY_KEYS = ("tier", "sandbox", "capabilities")
#: Fields of the previous action's result that ``emit`` may read as ``result.FIELD``.
RESULT_FIELDS = ("stdout", "stderr", "exit_code", "success", "killed_by", "timed_out", "tier")
#: The largest agent text read, in bytes (UTF-8): parsing is linear, but not free.
MAX_AGENT_BYTES = 2 * 1024 * 1024
# How much of a long line an error shows.
_SHOWN = 100
#: The deepest a list may nest in a value.
MAX_NESTING = 32
_LITERAL_WORDS = {"true": True, "false": False, "null": None}
# Terminals named by what they hold, in "expected ..." messages.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "STRING": "a string",
    "LONG_STRING": "a string",
    "SIGNED_NUMBER": "a number",
    "$END": "the end of the text",
}


@functools.cache
def _lark() -> Lark:
    return Lark(
        GRAMMAR.read_text(encoding="utf-8"),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
    )


def load(
    text: str,
    orchestrator: SandboxOrchestrator | None = None,
    directory: str | os.PathLike[str] | None = None,
) -> list[Agent]:
    """The agents defined in ``text`` (any number), bound to ``orchestrator`` when one
    is given; ``directory`` is their notebook directory (default: the current one).
    Agents loaded without one run through the default orchestrator
    (:func:`~..orchestrator.default_orchestrator`, configured as the magics' is), made
    when first needed."""
    agents = _Reader(text).agents()
    if orchestrator is not None:
        agents = [agent.bind(orchestrator, directory) for agent in agents]
    return agents


# -- errors --------------------------------------------------------------------------
def located(text: str, line: int, column: int, message: str) -> ConfigError:
    """``line L, column C: message``, then the line (at most :data:`_SHOWN` characters of
    it) and a caret under column C."""
    shown = column
    lines = text.splitlines() or [""]
    line = min(max(line, 1), len(lines))
    source = lines[line - 1]
    if len(source) > _SHOWN:
        # A window of a long line around the spot, so the error stays readable.
        start = max(0, min(column - 1 - _SHOWN // 2, len(source) - _SHOWN))
        source = source[start : start + _SHOWN]
        column -= start
    # Keep tabs in the caret's indent so it lines up under tab-indented text.
    indent = "".join(c if c == "\t" else " " for c in source[: max(column - 1, 0)])
    return ConfigError(f"line {line}, column {shown}: {message}\n    {source}\n    {indent}^")


def _syntax_error(text: str, exc: UnexpectedInput) -> ConfigError:
    if isinstance(exc, UnexpectedToken):
        expected = _expected(exc.expected)
        if exc.token.type == "$END":
            lines = text.splitlines() or [""]
            return located(
                text, len(lines), len(lines[-1]) + 1, f"the text ends too soon; expected {expected}"
            )
        found = summarize(str(exc.token.value), 40)
        return located(text, exc.line, exc.column, f"unexpected {found!r}; expected {expected}")
    if isinstance(exc, UnexpectedCharacters):
        if exc.char == '"':
            message = (
                'unterminated string (a string ends on its line; use """...""" for several lines)'
            )
        else:
            message = f"unexpected character {exc.char!r}"
        return located(text, exc.line, exc.column, message)
    return located(text, getattr(exc, "line", 1), getattr(exc, "column", 1), str(exc))


def _expected(names: set[str]) -> str:
    words = set()
    for name in names:
        if name in _TERMINAL_WORDS:
            words.add(_TERMINAL_WORDS[name])
            continue
        try:
            pattern = _lark().get_terminal(name).pattern
        except KeyError:
            words.add(name)
            continue
        words.add(repr(pattern.value) if isinstance(pattern, PatternStr) else name)
    ordered = sorted(words)
    if len(ordered) == 1:
        return ordered[0]
    return "one of " + ", ".join(ordered)


# -- meaning -------------------------------------------------------------------------
class _Word:
    """A bare word (``None``, ``Permissive``, ``payload.x``) before its context says
    what it is."""

    def __init__(self, parts: tuple[str, ...]) -> None:
        self.parts = parts

    @property
    def text(self) -> str:
        return ".".join(self.parts)


class _Reader:
    """Turns the parse tree into :class:`Agent` objects, checking as it goes."""

    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, where: Tree | Token, message: str) -> ConfigError:
        if isinstance(where, Token):
            line, column = where.line, where.column
        else:
            line, column = where.meta.line, where.meta.column
        return located(self.text, line or 1, column or 1, message)

    def agents(self) -> list[Agent]:
        size = len(self.text.encode("utf-8", "surrogatepass"))
        if size > MAX_AGENT_BYTES:
            raise ConfigError(
                f"the agent text is {size} bytes, more than the {MAX_AGENT_BYTES} "
                "read; split it into several files"
            )
        try:
            tree = _lark().parse(self.text)
        except UnexpectedInput as exc:
            raise _syntax_error(self.text, exc) from None
        self.check_nesting(tree)
        agents: dict[str, Agent] = {}
        for node in tree.children:
            assert isinstance(node, Tree)  # the grammar: a file is agents
            agent = self.agent(node)
            if agent.name in agents:
                raise self.error(node.children[0], f"agent {agent.name} is defined twice")
            agents[agent.name] = agent
        return list(agents.values())

    def check_nesting(self, tree: Tree) -> None:
        """Refuse lists nested deeper than :data:`MAX_NESTING` before anything recurses
        into them (iteratively: the check must not be what overflows)."""
        stack: list[tuple[Tree, int]] = [(tree, 0)]
        while stack:
            node, depth = stack.pop()
            if node.data == "list":
                depth += 1
                if depth > MAX_NESTING:
                    raise self.error(node, f"lists nest more than {MAX_NESTING} deep here")
            stack.extend((c, depth) for c in node.children if isinstance(c, Tree))

    def agent(self, node: Tree) -> Agent:
        name_token, *sections = node.children
        seen: dict[str, Tree] = {}
        triggers: dict[str, Trigger] = {}
        metadata: dict[str, Tree] = {}
        security: dict[str, Tree] = {}
        for section in sections:
            kind = section.data
            if kind == "trigger":
                trigger = self.trigger(section)
                if trigger.name in triggers:
                    raise self.error(
                        section, f"trigger {trigger.name!r} is defined twice in agent {name_token}"
                    )
                triggers[trigger.name] = trigger
                continue
            if kind in seen:
                raise self.error(section, f"a second {kind} block in agent {name_token}; write one")
            seen[kind] = section
            target = metadata if kind == "metadata" else security
            for pair in section.children:
                key, value = pair.children
                if key in target:
                    raise self.error(key, f"{key} is given twice in {kind}")
                if kind == "security" and key not in SECURITY_KEYS:
                    raise self.error(
                        key,
                        f"unknown security setting {str(key)!r}; accepted: "
                        + ", ".join(SECURITY_KEYS),
                    )
                target[str(key)] = value
        if "tier" not in security:
            raise self.error(
                name_token,
                f"agent {name_token} names no tier: add security {{ tier: ... }} with one of "
                + ", ".join(SecurityTier.accepted_names()),
            )
        return Agent(
            name=str(name_token),
            tier=self.tier(security["tier"]),
            sandbox=self.mode(security["sandbox"]) if "sandbox" in security else SandboxMode.STRICT,
            capabilities=self.capabilities(security["capabilities"])
            if "capabilities" in security
            else (),
            metadata={key: self.plain(value) for key, value in metadata.items()},
            triggers=triggers,
            source=self.span(node),
        )

    def span(self, node: Tree) -> str:
        return self.text[node.meta.start_pos : node.meta.end_pos]

    # -- security
    def name_of(self, node: Tree, what: str) -> str:
        value = self.value(node)
        if isinstance(value, _Word):
            return value.text
        if isinstance(value, str):
            return value
        raise self.error(node, f"{what} must be a name or a string")

    def tier(self, node: Tree) -> SecurityTier:
        try:
            return SecurityTier.parse(self.name_of(node, "tier"))
        except ConfigError as exc:
            raise self.error(node, str(exc)) from None

    def mode(self, node: Tree) -> SandboxMode:
        try:
            return SandboxMode.parse(self.name_of(node, "sandbox"))
        except ConfigError as exc:
            raise self.error(node, str(exc)) from None

    def capabilities(self, node: Tree) -> tuple[str, ...]:
        if node.data != "list":
            raise self.error(node, 'capabilities must be a list, e.g. ["network"]')
        return self.capability_list(node)

    def capability_list(self, node: Tree) -> tuple[str, ...]:
        names: list[str] = []
        for item in node.children:
            name = self.name_of(item, "a capability")
            if name not in CAPABILITIES:
                raise self.error(
                    item, f"unknown capability {name!r}; known: " + ", ".join(CAPABILITIES)
                )
            if name not in names:
                names.append(name)
        return tuple(names)

    # -- triggers and actions
    def trigger(self, node: Tree) -> Trigger:
        name_token, *actions = node.children
        assert isinstance(name_token, Token)  # the grammar: a trigger's name is a token
        name = self.plain_token(name_token)
        parsed: list[Run | Emit] = []
        ran = False
        for child in actions:
            action = self.action(child)
            if isinstance(action, Emit) and not ran and _reads_result(action.value):
                raise self.error(
                    child, "emit reads result.FIELD, but no action runs before it in this trigger"
                )
            ran = ran or isinstance(action, Run)
            parsed.append(action)
        return Trigger(name=name, actions=tuple(parsed), line=node.meta.line)

    def action(self, node: Tree) -> Run | Emit:
        name, *args = node.children
        assert isinstance(name, Token)  # the grammar: an action's name is a token
        if name not in ACTIONS:
            raise self.error(name, f"unknown action {str(name)!r}; accepted: " + ", ".join(ACTIONS))
        params, takes_needs = ACTIONS[name]
        positional = [a for a in args if not (isinstance(a, Tree) and a.data == "named_arg")]
        named = [a for a in args if isinstance(a, Tree) and a.data == "named_arg"]
        signature = f"{name}({', '.join(params)}{', needs: [...]' if takes_needs else ''})"
        if len(positional) != len(params):
            raise self.error(
                node,
                f"{name} takes {len(params)} argument{'s' if len(params) > 1 else ''}: {signature}",
            )
        needs: tuple[str, ...] = ()
        for arg in named:
            key, value = arg.children
            if key != "needs" or not takes_needs:
                raise self.error(key, f"{name} takes no argument {str(key)!r}: {signature}")
            if value.data != "list":
                raise self.error(value, 'needs must be a list of capabilities, e.g. ["network"]')
            needs = self.capability_list(value)
        source, line = self.span(node), node.meta.line
        if name == "emit":
            label = self.value(positional[0])
            if not isinstance(label, str):
                raise self.error(positional[0], "emit's name must be a string")
            return Emit(name=label, value=self.emitted(positional[1]), source=source, line=line)
        texts = []
        for param, arg in zip(params, positional, strict=True):
            value = self.value(arg)
            if not isinstance(value, str):
                # Commands and code are literals: nothing is ever spliced into them.
                raise self.error(
                    arg,
                    f"{name}'s {param} must be a string literal; the "
                    "trigger's payload reaches the code as $SYMBI_PAYLOAD",
                )
            texts.append(value)
        if name == "run_code":
            language, code = texts
            try:
                policy.language_spec(language)
            except ConfigError as exc:
                raise self.error(positional[0], str(exc)) from None
        else:
            language, code = "sh", texts[0]
        return Run(
            kind=str(name),
            language=language.strip().lower(),
            code=code,
            needs=needs,
            source=source,
            line=line,
        )

    def emitted(self, node: Tree) -> Any:
        """An emit's value: a literal, or a :class:`Ref` read when it runs."""
        value = self.value(node)
        if isinstance(value, _Word):
            head, *rest = value.parts
            if head == "payload":
                return Ref(value.parts)
            if head == "result" and len(rest) == 1 and rest[0] in RESULT_FIELDS:
                return Ref(value.parts)
            raise self.error(
                node,
                f"unknown value {value.text!r}; use a literal, payload, "
                "payload.KEY, or result.FIELD with FIELD one of " + ", ".join(RESULT_FIELDS),
            )
        if isinstance(value, list):
            return [self.emitted(child) for child in node.children]
        return value

    # -- values
    def value(self, node: Tree) -> Any:
        """A value as Python: str, int, float, bool, None, list, or a :class:`_Word`."""
        kind = node.data
        if kind == "string":
            return self.string(_only_token(node))
        if kind == "long_string":
            return _long_string(_only_token(node))
        if kind == "number":
            raw = str(node.children[0])
            try:
                return int(raw)
            except ValueError:
                return float(raw)
        if kind == "word":
            parts = tuple(str(t) for t in node.children)
            if len(parts) == 1 and parts[0] in _LITERAL_WORDS:
                return _LITERAL_WORDS[parts[0]]
            return _Word(parts)
        if kind == "list":
            return [self.value(child) for child in node.children]
        raise self.error(node, f"unexpected {kind}")  # the grammar has no other kind

    def plain(self, node: Tree) -> Any:
        """A metadata value: bare words read as their text."""
        value = self.value(node)
        if isinstance(value, _Word):
            return value.text
        if isinstance(value, list):
            return [self.plain(child) for child in node.children]
        return value

    def plain_token(self, token: Token) -> str:
        if token.type == "STRING":
            return self.string(token)
        if token.type == "LONG_STRING":
            return _long_string(token)
        return str(token)

    def string(self, token: Token) -> str:
        try:
            return json.loads(token)
        except json.JSONDecodeError as exc:
            assert token.line is not None and token.column is not None  # the lexer's tokens
            raise located(
                self.text, token.line, token.column + exc.pos, f"bad escape in string ({exc.msg})"
            ) from None


def _only_token(node: Tree) -> Token:
    """The token a string node (``string``, ``long_string``) is made of."""
    token = node.children[0]
    assert isinstance(token, Token)
    return token


def _long_string(token: Token) -> str:
    """A \"\"\"...\"\"\" string: taken as written, the first newline dropped, dedented."""
    body = str(token)[3:-3]
    if body.startswith("\n"):
        body = body[1:]
    return textwrap.dedent(body)


def _reads_result(value: Any) -> bool:
    if isinstance(value, list):
        return any(_reads_result(item) for item in value)
    return isinstance(value, Ref) and value.path[0] == "result"
