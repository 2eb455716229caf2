"""Edits of a TOML file that keep every byte local-ai does not own (Codex's config.toml).

Two kinds of slot: a top-level key with a scalar value (`("model",)`), and a table written as
one `[a.b]` block (`("model_providers", "local-ai")` with a dict of scalars). New keys go in
as one line before the first table, new tables as one block at the end; removal takes out
exactly what was added. tomlkit parses (and replaces an existing key's value, keeping its
comment); every edit is checked by parsing the result.
"""

from __future__ import annotations

import re
from typing import Any

_HEADER = re.compile(r"^[ \t]*\[\[?(?P<key>[^\]\n]+)\]\]?[ \t]*(#[^\n]*)?$", re.MULTILINE)
_BARE = re.compile(r"[A-Za-z0-9_-]+")


class TomlKeysError(ValueError):
    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


def parse(text: str) -> dict[str, Any]:
    """The document as plain Python values."""
    import tomlkit
    from tomlkit.exceptions import ParseError

    try:
        data: dict[str, Any] = tomlkit.parse(text).unwrap()
    except ParseError as exc:
        raise TomlKeysError(f"not valid TOML: {exc}", exc.line, exc.col) from None
    return data


def lookup(text: str, slot: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = parse(text)
    for part in slot:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def key(part: str) -> str:
    """A key as TOML writes it: bare when it can be, else quoted."""
    import tomlkit

    return part if _BARE.fullmatch(part) else tomlkit.string(part).as_string()


def scalar(value: Any) -> str:
    import tomlkit

    if isinstance(value, dict):
        raise TomlKeysError("a nested table inside a local-ai table is not supported")
    return str(tomlkit.item(value).as_string())


def _headers(text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """(line start, line end, dotted key) of each table header line."""
    out = []
    for match in _HEADER.finditer(text):
        try:
            path = _header_path(match.group("key"))
        except TomlKeysError:
            continue  # a line inside a multi-line value that only looks like a header
        out.append((match.start(), match.end(), path))
    return out


def _header_path(raw: str) -> tuple[str, ...]:
    node: Any = parse(f"[{raw.strip()}]\n")
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        part = next(iter(node))
        path.append(part)
        node = node[part]
    return tuple(path)


def _line_end(text: str, offset: int) -> int:
    end = text.find("\n", offset)
    return len(text) if end < 0 else end + 1


def _table_span(text: str, slot: tuple[str, ...]) -> tuple[int, int] | None:
    """Where the `[slot]` block is: its header to its last key line (with the newline)."""
    headers = _headers(text)
    for i, (start, _, path) in enumerate(headers):
        if path != slot:
            continue
        limit = headers[i + 1][0] if i + 1 < len(headers) else len(text)
        end = _line_end(text, start)
        offset = end
        while offset < limit:  # trailing blank and comment lines belong to what follows
            line_end = _line_end(text, offset)
            line = text[offset:line_end].strip()
            if line and not line.startswith("#"):
                end = line_end
            offset = line_end
        return start, end
    return None


def _root_line(text: str, name: str) -> tuple[int, int] | None:
    """The line of top-level key `name` (before the first table)."""
    headers = _headers(text)
    limit = headers[0][0] if headers else len(text)
    pattern = re.compile(rf"^[ \t]*{re.escape(key(name))}[ \t]*=", re.MULTILINE)
    match = pattern.search(text, 0, limit)
    if match is None:
        return None
    return match.start(), _line_end(text, match.start())


def _block(slot: tuple[str, ...], value: dict[str, Any]) -> str:
    lines = ["[" + ".".join(key(p) for p in slot) + "]"]
    lines += [f"{key(k)} = {scalar(v)}" for k, v in value.items()]
    return "\n".join(lines) + "\n"


def _checked(new: str, slot: tuple[str, ...], value: Any) -> str:
    found, have = lookup(new, slot)
    if not found or have != value:
        raise TomlKeysError(f"cannot set {'.'.join(slot)} here without changing other keys")
    return new


def set_value(text: str, slot: tuple[str, ...], value: Any) -> str:
    if isinstance(value, dict):
        span = _table_span(text, slot)
        block = _block(slot, value)
        if span is not None:
            return _checked(text[: span[0]] + block + text[span[1] :], slot, value)
        prefix = text
        if prefix and not prefix.endswith("\n"):
            prefix += "\n"
        if prefix and not prefix.endswith("\n\n"):
            prefix += "\n"
        return _checked(prefix + block, slot, value)
    if len(slot) != 1:
        raise TomlKeysError(f"{'.'.join(slot)}: only top-level keys hold single values here")
    found, _ = lookup(text, slot)
    if found:
        import tomlkit

        doc = tomlkit.parse(text)
        doc[slot[0]] = value
        return _checked(doc.as_string(), slot, value)
    line = f"{key(slot[0])} = {scalar(value)}\n"
    headers = _headers(text)
    if not headers:
        prefix = text if not text or text.endswith("\n") else text + "\n"
        return _checked(prefix + line, slot, value)
    at = headers[0][0]
    # After the last top-level key: above the blank and comment lines before the first table.
    while at > 0:
        previous = text.rfind("\n", 0, at - 1) + 1
        above = text[previous:at].strip()
        if above and not above.startswith("#"):
            break
        at = previous
    return _checked(text[:at] + line + text[at:], slot, value)


def delete(text: str, slot: tuple[str, ...]) -> str:
    """Without `slot`; a table block also takes the blank line set_value put before it."""
    if len(slot) == 1:
        found, have = lookup(text, slot)
        if found and not isinstance(have, dict):
            span = _root_line(text, slot[0])
            return text if span is None else text[: span[0]] + text[span[1] :]
    span = _table_span(text, slot)
    if span is None:
        return text
    start, end = span
    if text[max(start - 2, 0) : start] == "\n\n":
        start -= 1
    return text[:start] + text[end:]


def raw(text: str, slot: tuple[str, ...]) -> str | None:
    """The slot exactly as written: its line (a key) or its block (a table)."""
    found, have = lookup(text, slot)
    if not found:
        return None
    span = _root_line(text, slot[0]) if len(slot) == 1 and not isinstance(have, dict) else None
    span = span or _table_span(text, slot)
    return None if span is None else text[span[0] : span[1]]


def set_raw(text: str, slot: tuple[str, ...], written: str) -> str:
    """Put back what `raw` returned, in place of the slot's current line or block."""
    found, have = lookup(text, slot)
    span = None
    if found:
        single = len(slot) == 1 and not isinstance(have, dict)
        span = _root_line(text, slot[0]) if single else _table_span(text, slot)
    if span is None:
        raise TomlKeysError(f"{'.'.join(slot)} is not in the file to be restored")
    return text[: span[0]] + written + text[span[1] :]
