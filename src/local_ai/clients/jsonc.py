"""A small editor for JSON with comments and trailing commas (Zed's settings format).

Edits splice text: only the bytes of the member being set, inserted or deleted change, so the
user's comments, key order, indentation and trailing commas survive. Inserting a member and then
deleting it gives back the original text exactly (an object left empty collapses to ``{}``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n\ufeff]+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\x00-\x1f]|\\.)*")
  | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?![0-9A-Za-z_.]))
  | (?P<literal>(?:true|false|null)(?![0-9A-Za-z_]))
  | (?P<punct>[{}\[\]:,])
    """,
    re.VERBOSE | re.DOTALL,
)

Path = tuple[str, ...]


class JsoncError(ValueError):
    """The text is not JSON with comments; carries the 1-based line and column."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.problem = message
        self.line = line
        self.column = column


class JsoncEditError(ValueError):
    """The document cannot hold the edit (e.g. a key on the path is not an object)."""


@dataclass(frozen=True)
class Token:
    kind: str  # "comment", "string", "number", "literal", or the punctuation itself
    start: int
    end: int


@dataclass
class Node:
    kind: str  # "object", "array" or "scalar"
    start: int
    end: int
    members: list[Member] = field(default_factory=list)  # objects
    items: list[Node] = field(default_factory=list)  # arrays
    token: Token | None = None  # scalars


@dataclass
class Member:
    key: str
    key_start: int
    value: Node
    comma: int | None  # offset of the comma that follows, if any


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def tokenize(text: str) -> list[Token]:
    """Every token but whitespace; comments are kept (they matter for emptiness)."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            line, col = _position(text, pos)
            rest = text[pos : pos + 2]
            if rest.startswith('"'):
                problem = "unterminated string (or a raw control character inside it)"
            elif rest == "/*":
                problem = "unterminated /* comment"
            else:
                problem = f"unexpected character {text[pos]!r}"
            raise JsoncError(problem, line, col)
        kind = match.lastgroup or ""
        if kind != "ws":
            if kind == "punct":
                kind = match.group()
            tokens.append(Token(kind, match.start(), match.end()))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = [t for t in tokenize(text) if t.kind != "comment"]
        self.i = 0

    def _error(self, message: str, token: Token | None = None) -> JsoncError:
        offset = token.start if token else len(self.text)
        line, col = _position(self.text, offset)
        return JsoncError(message, line, col)

    def _peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _next(self, expected: str) -> Token:
        token = self._peek()
        if token is None:
            raise self._error(f"expected {expected}, found the end of the file")
        self.i += 1
        return token

    def document(self) -> Node | None:
        if self._peek() is None:
            return None
        node = self.value()
        extra = self._peek()
        if extra is not None:
            raise self._error("unexpected text after the top-level value", extra)
        return node

    def value(self) -> Node:
        token = self._next("a value")
        if token.kind == "{":
            return self._object(token)
        if token.kind == "[":
            return self._array(token)
        if token.kind in ("string", "number", "literal"):
            return Node("scalar", token.start, token.end, token=token)
        raise self._error(f"expected a value, found {token.kind!r}", token)

    def _object(self, open_: Token) -> Node:
        node = Node("object", open_.start, open_.end)
        while True:
            token = self._next("a key or '}'")
            if token.kind == "}":
                node.end = token.end
                return node
            if token.kind != "string":
                raise self._error("expected a quoted key", token)
            colon = self._next("':'")
            if colon.kind != ":":
                raise self._error("expected ':' after the key", colon)
            value = self.value()
            key = json.loads(self.text[token.start : token.end])
            member = Member(key, token.start, value, None)
            node.members.append(member)
            after = self._next("',' or '}'")
            if after.kind == ",":
                member.comma = after.start
            elif after.kind == "}":
                node.end = after.end
                return node
            else:
                raise self._error("expected ',' or '}'", after)

    def _array(self, open_: Token) -> Node:
        node = Node("array", open_.start, open_.end)
        while True:
            token = self._peek()
            if token is not None and token.kind == "]":
                self.i += 1
                node.end = token.end
                return node
            node.items.append(self.value())
            after = self._next("',' or ']'")
            if after.kind == "]":
                node.end = after.end
                return node
            if after.kind != ",":
                raise self._error("expected ',' or ']'", after)


def parse(text: str) -> Node | None:
    """The top-level value, or None for a document holding only whitespace and comments."""
    return _Parser(text).document()


def to_python(text: str, node: Node) -> Any:
    if node.kind == "object":
        return {m.key: to_python(text, m.value) for m in node.members}  # last duplicate wins
    if node.kind == "array":
        return [to_python(text, item) for item in node.items]
    return json.loads(text[node.start : node.end])


def loads(text: str) -> Any:
    node = parse(text)
    return None if node is None else to_python(text, node)


def find_member(node: Node, key: str) -> Member | None:
    """The last member named `key` (the one a lenient parser keeps)."""
    for member in reversed(node.members):
        if member.key == key:
            return member
    return None


def node_at(text: str, path: Path) -> Node | None:
    """The value node at `path` (None when missing or a non-object is on the way)."""
    node = parse(text)
    for key in path:
        if node is None or node.kind != "object":
            return None
        member = find_member(node, key)
        node = member.value if member else None
    return node


def raw_value(text: str, path: Path) -> str | None:
    """The exact source text of the value at `path` (comments and commas inside included)."""
    node = node_at(text, path)
    return None if node is None else text[node.start : node.end]


def replace_raw(text: str, path: Path, raw: str) -> str:
    """Put `raw` source text back as the value at `path`, which must exist."""
    node = node_at(text, path)
    if node is None:
        raise JsoncEditError(f"{'.'.join(path)} is missing")
    return text[: node.start] + raw + text[node.end :]


def lookup(text: str, path: Path) -> tuple[bool, Any]:
    """(found, value) at `path`; a missing file or key, or a non-object on the way, is not found."""
    node = parse(text)
    for key in path:
        if node is None or node.kind != "object":
            return False, None
        member = find_member(node, key)
        node = member.value if member else None
    if node is None:
        return False, None
    return True, to_python(text, node)


# --------------------------------------------------------------------------------- layout


def newline_of(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def indent_unit(text: str) -> str:
    """The indentation step the file uses (two spaces when it shows none)."""
    match = re.search(r"\n([ \t]+)\S", text)
    return match.group(1) if match else "  "


def _line_indent(text: str, offset: int) -> str:
    start = text.rfind("\n", 0, offset) + 1
    match = re.match(r"[ \t]*", text[start:])
    return match.group() if match else ""


def _starts_line(text: str, offset: int) -> bool:
    start = text.rfind("\n", 0, offset) + 1
    return text[start:offset].strip(" \t") == ""


_SAME_LINE_COMMENT = re.compile(r"[ \t]*(?://[^\n]*|/\*(?:(?!\*/)[^\n])*\*/)")


def _end_of_line(text: str, offset: int) -> int:
    """Skip comments that stay on this line: the place to append after `offset`."""
    pos = offset
    while (match := _SAME_LINE_COMMENT.match(text, pos)) is not None and match.end() > pos:
        pos = match.end()
    return pos


def render(value: Any, unit: str, indent: str, newline: str = "\n") -> str:
    """JSON for `value` as it sits at `indent` in a file indented by `unit`."""
    text = json.dumps(value, indent=unit, ensure_ascii=False)
    return text.replace("\n", newline + indent)


def _nest(path: Path, value: Any) -> Any:
    for key in reversed(path):
        value = {key: value}
    return value


# ---------------------------------------------------------------------------------- edits


def _member_indent(text: str, obj: Node, unit: str) -> str:
    for member in obj.members:
        if _starts_line(text, member.key_start):
            return _line_indent(text, member.key_start)
    return _line_indent(text, obj.start) + unit


def insert_member(text: str, obj: Node, key: str, value: Any) -> str:
    """Add `"key": value` as the last member of `obj`, following the object's comma style."""
    nl = newline_of(text)
    unit = indent_unit(text)
    indent = _member_indent(text, obj, unit)
    member = f"{json.dumps(key, ensure_ascii=False)}: {render(value, unit, indent, nl)}"
    if obj.members:
        last = obj.members[-1]
        if last.comma is not None:  # trailing-comma style: ours gets one too
            at = _end_of_line(text, last.comma + 1)
            return text[:at] + nl + indent + member + "," + text[at:]
        at = _end_of_line(text, last.value.end)
        text = text[:at] + nl + indent + member + text[at:]
        return text[: last.value.end] + "," + text[last.value.end :]
    inner_start, inner_end = obj.start + 1, obj.end - 1
    inner = text[inner_start:inner_end]
    if inner.strip() == "":
        close_indent = _line_indent(text, obj.start)
        return text[:inner_start] + nl + indent + member + nl + close_indent + text[inner_end:]
    # Only comments inside: add after the last one.
    at = inner_start + len(inner.rstrip())
    return text[:at] + nl + indent + member + text[at:]


def delete_member(text: str, obj: Node, member: Member) -> str:
    """Remove `member` and the separator that belongs to it; the inverse of insert_member."""
    start = member.key_start
    while start > obj.start + 1 and text[start - 1] in " \t\r\n":
        start -= 1
    if member.comma is not None:
        return text[:start] + text[member.comma + 1 :]
    index = next(i for i, m in enumerate(obj.members) if m is member)
    end = member.value.end
    if index > 0:
        prev = obj.members[index - 1]
        assert prev.comma is not None
        text = text[:start] + text[end:]
        return text[: prev.comma] + text[prev.comma + 1 :]
    inner = text[obj.start + 1 : start] + text[end : obj.end - 1]
    if inner.strip() == "":
        return text[: obj.start + 1] + text[obj.end - 1 :]
    return text[:start] + text[end:]


def set_value(text: str, path: Path, value: Any) -> tuple[str, list[Path]]:
    """Set the value at `path`, creating the objects on the way. Returns the new text and the
    paths of the objects it created (the root is ``()``), so they can be pruned later."""
    if not path:
        raise JsoncEditError("an empty path names the whole document")
    root = parse(text)
    nl = newline_of(text)
    if root is None:
        body = render(_nest(path, value), indent_unit(text), "", nl)
        sep = "" if text == "" or text.endswith("\n") else nl
        created = [(), *[path[:i] for i in range(1, len(path))]]
        return text + sep + body + nl, created
    node = root
    for depth, key in enumerate(path):
        if node.kind != "object":
            where = ".".join(path[:depth]) or "the top level"
            raise JsoncEditError(f"{where} is not an object, so {'.'.join(path)} cannot be set")
        member = find_member(node, key)
        if member is None:
            new = insert_member(text, node, key, _nest(path[depth + 1 :], value))
            return new, [path[:i] for i in range(depth + 1, len(path))]
        node = member.value
    unit = indent_unit(text)
    indent = _line_indent(text, node.start)
    return text[: node.start] + render(value, unit, indent, nl) + text[node.end :], []


def delete(text: str, path: Path) -> str:
    """Remove the member at `path` (no-op when absent)."""
    root = parse(text)
    if not path:
        raise JsoncEditError("an empty path names the whole document")
    node = root
    for key in path[:-1]:
        if node is None or node.kind != "object":
            return text
        member = find_member(node, key)
        node = member.value if member else None
    if node is None or node.kind != "object":
        return text
    member = find_member(node, path[-1])
    return text if member is None else delete_member(text, node, member)


def is_empty_object(text: str, path: Path) -> bool:
    """True when `path` is an object with neither members nor comments inside."""
    node = parse(text)
    for key in path:
        if node is None or node.kind != "object":
            return False
        member = find_member(node, key)
        node = member.value if member else None
    if node is None or node.kind != "object" or node.members:
        return False
    return text[node.start + 1 : node.end - 1].strip() == ""


def delete_root(text: str) -> str:
    """Remove an empty top-level object that an edit created, and the newline after it."""
    root = parse(text)
    if root is None:
        return text
    end = root.end
    for nl in ("\r\n", "\n"):
        if text.startswith(nl, end):
            end += len(nl)
            break
    return text[: root.start] + text[end:]
