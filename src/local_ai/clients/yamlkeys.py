"""Line-based edits of top-level scalar keys in a YAML mapping (Goose's config.yaml).

Only ``KEY: value`` lines at column 0 are read or written; every other line is kept byte for
byte. That is all local-ai needs (GOOSE_PROVIDER, GOOSE_MODEL) and it never reformats the file.
"""

from __future__ import annotations

import json
import re

_KEY_LINE = r"^{key}[ \t]*:(?P<rest>[^\r\n]*)(?P<eol>\r?\n|$)"
_EMPTY_FLOW = re.compile(r"\s*\{\s*\}\s*")


class YamlKeysError(ValueError):
    """The file is not a block mapping this editor can change safely."""


def _check_block_mapping(text: str) -> None:
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        if _EMPTY_FLOW.fullmatch(text):
            return
        if stripped.startswith(("{", "[", "- ")) or stripped == "-":
            raise YamlKeysError("the top level is not a block mapping (KEY: value lines)")
        return


def _find(text: str, key: str) -> re.Match[str] | None:
    pattern = re.compile(_KEY_LINE.format(key=re.escape(key)), re.MULTILINE)
    return pattern.search(text)


def _split_comment(rest: str) -> tuple[str, str]:
    """(value, comment) of the text after the colon; '#' inside quotes is not a comment."""
    quote = None
    i = 0
    while i < len(rest):
        ch = rest[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1  # skip the escaped character
            elif ch == quote:
                quote = None
        elif ch in "\"'" and rest[:i].strip() == "":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i], rest[i:]
        i += 1
    return rest, ""


def _scalar(raw: str) -> str | None:
    value = raw.strip()
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        try:
            return str(json.loads(value))
        except ValueError:
            return value[1:-1]
    if value.startswith("'") and value.endswith("'") and len(value) >= 2:
        return value[1:-1].replace("''", "'")
    if value in ("", "~", "null", "Null", "NULL"):
        return None
    return value


def get(text: str, key: str) -> tuple[bool, str | None]:
    """(found, value) of a top-level scalar key; a key with a nested block reads as None."""
    match = _find(text, key)
    if match is None:
        return False, None
    value, _ = _split_comment(match.group("rest"))
    return True, _scalar(value)


def raw_value(text: str, key: str) -> str | None:
    """The value of `key` as written (quotes included, comment excluded)."""
    match = _find(text, key)
    if match is None:
        return None
    value, _ = _split_comment(match.group("rest"))
    return value.strip()


def quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def set_key(text: str, key: str, value: str, *, raw: bool = False) -> str:
    """Set `key` to the quoted `value` (`raw`: as given): in place, keeping a trailing
    comment, or appended."""
    _check_block_mapping(text)
    written = value if raw else quote(value)
    if _EMPTY_FLOW.fullmatch(text):
        # `{}` (how YAML writers save an empty mapping) becomes the first key.
        nl = "\r\n" if "\r\n" in text else "\n"
        return f"{key}: {written}{nl}"
    match = _find(text, key)
    if match is None:
        nl = "\r\n" if "\r\n" in text else "\n"
        line = f"{key}: {written}"
        if text == "" or text.endswith("\n"):
            return text + line + nl
        return text + nl + line
    old_value, comment = _split_comment(match.group("rest"))
    if old_value.strip() == "" and _has_block(text, match.end()):
        raise YamlKeysError(f"{key} holds a nested block, not a single value")
    # Keep the spacing before a trailing comment.
    gap = (old_value[len(old_value.rstrip()) :] or " ") if comment else ""
    new_rest = f" {written}{gap}{comment}"
    return text[: match.start("rest")] + new_rest + text[match.end("rest") :]


def _has_block(text: str, offset: int) -> bool:
    rest = text[offset:]
    for line in rest.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        return line[:1] in (" ", "\t", "-")
    return False


def delete_key(text: str, key: str) -> str:
    """Remove the `key` line; the inverse of appending it with set_key."""
    match = _find(text, key)
    if match is None:
        return text
    start, end = match.start(), match.end()
    if match.group("eol") == "" and start > 0:
        # The last line had no newline: take the one before it, as set_key added it.
        start -= 2 if text[start - 2 : start] == "\r\n" else 1
    return text[:start] + text[end:]
