"""File names from untrusted places (a hub listing, a lock file): which ones are safe to use."""

from __future__ import annotations

import re

MAX_NAME_CHARS = 1024
MAX_PART_CHARS = 255
_ENCODED_RE = re.compile(r"%[0-9a-fA-F]{2}")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def name_problem(name: str) -> str | None:
    """Why `name` is not a safe relative file name, or None when it is."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "contains control characters"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/") or _DRIVE_RE.match(name):
        return "is an absolute path"
    if _ENCODED_RE.search(name):
        # The client does not decode these, but a later tool (or a web server) might.
        return "contains a URL-encoded character"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' path component"
        if len(part) > MAX_PART_CHARS:
            return f"has a component longer than {MAX_PART_CHARS} characters"
    return None
