"""Find where a key is written in a TOML file, so errors can name the line.

tomllib and tomlkit keep no positions, so this scans the text: table headers, array-of-table
headers and `key = value` lines, skipping multi-line strings. Keys inside inline tables resolve
to the line of the inline table itself, which is where a person would look.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from local_ai.errors import ConfigError

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\]|\\.)*"'
_LITERAL = r"'[^']*'"
_KEY_PART = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_TABLE_RE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_ARRAY_TABLE_RE = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_ASSIGN_RE = re.compile(rf"^(\s*)({_DOTTED})\s*=")
_PART_RE = re.compile(_KEY_PART)

Path_ = tuple[str | int, ...]


@dataclass
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class KeyIndex:
    """Positions of every key and table header found in a TOML text."""

    keys: dict[Path_, Position] = field(default_factory=dict)

    def find(self, loc: Path_) -> Position | None:
        """Position of `loc`, or of its closest written ancestor (for missing keys)."""
        for end in range(len(loc), 0, -1):
            pos = self.keys.get(tuple(loc[:end]))
            if pos is not None:
                return pos
        return None


def _split_key(dotted: str) -> list[str]:
    parts = []
    for match in _PART_RE.finditer(dotted):
        raw = match.group(0)
        if raw[0] in "\"'":
            raw = raw[1:-1]
        parts.append(raw)
    return parts


def index_keys(text: str) -> KeyIndex:
    index = KeyIndex()
    table: list[str | int] = []
    array_counts: dict[tuple[str | int, ...], int] = {}
    in_multiline: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if in_multiline is not None:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        if match := _ARRAY_TABLE_RE.match(line):
            base = tuple(_split_key(match.group(1)))
            count = array_counts.get(base, 0)
            array_counts[base] = count + 1
            table = [*base, count]
            index.keys.setdefault(base, Position(lineno, match.start(1) + 1))
            index.keys[tuple(table)] = Position(lineno, match.start(1) + 1)
            continue
        if match := _TABLE_RE.match(line):
            table = list(_split_key(match.group(1)))
            for depth in range(1, len(table) + 1):  # [a.b] also defines a
                index.keys.setdefault(tuple(table[:depth]), Position(lineno, match.start(1) + 1))
            continue
        if match := _ASSIGN_RE.match(line):
            parts = _split_key(match.group(2))
            column = len(match.group(1)) + 1
            for depth in range(1, len(parts) + 1):
                index.keys.setdefault((*table, *parts[:depth]), Position(lineno, column))
            rest = line[match.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
                    break
    return index


def format_key(loc: Path_) -> str:
    """`models.coder.files[0]`, quoting parts that are not bare keys."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if re.fullmatch(_BARE, part) else repr(part))
    return out


def key_error(
    message: str, index: KeyIndex, loc: Path_, *, path: Path | None, hint: str | None
) -> ConfigError:
    """An error naming the key `loc` and the line it is written on (or its closest ancestor's)."""
    pos = index.find(loc)
    return ConfigError(
        message,
        path=path,
        line=pos.line if pos else None,
        column=pos.column if pos else None,
        key=format_key(loc) or None,
        hint=hint,
    )
