"""Load local-ai.toml into a Manifest, turning every problem into a message that names the
file, the line, the key and the fix."""

from __future__ import annotations

import difflib
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from local_ai.errors import ConfigError, ManifestError, NotFoundError
from local_ai.manifest.locate import KeyIndex, index_keys, key_error
from local_ai.manifest.models import MANIFEST_VERSION, Manifest, ReferenceProblem

MAX_MANIFEST_BYTES = 1024 * 1024
_TOML_POS_RE = re.compile(r"\(at line (\d+), column (\d+)\)")
_TOML_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "a table",
    list: "an array",
}
_EXPECTED_BY_ERROR = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "list_type": "an array",
}
_LITERAL_NOUNS = {
    "quantize": "level",
    "group_size": "group size",
    "backend": "backend",
    "parallel": "parallel mode",
}
_PATTERN_HINTS = {
    "repo": "is not a HuggingFace repo id; write 'owner/name', e.g. 'mlx-community/Qwen3-8B-4bit'",
    "api_key_env": "is not an environment variable name (letters, digits and '_')",
    "hosts": "is not a host name (letters, digits, '.', '_' and '-')",
    "rank0": "is not a host name (letters, digits, '.', '_' and '-')",
}
_INIT_HINT = "run `local-ai init` to write a commented manifest for this machine"


@dataclass(frozen=True)
class LoadedManifest:
    """A validated manifest with the file it came from and the raw text (for fingerprints)."""

    manifest: Manifest
    path: Path
    text: str


def load_manifest(path: Path) -> LoadedManifest:
    """Read, parse and validate a manifest file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no manifest at {path}", hint=_INIT_HINT) from None
    except IsADirectoryError:
        raise ConfigError(
            "is a directory, not a manifest file", path=path, hint="point --config at a .toml file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", path=path) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ConfigError(
            f"is {len(raw)} bytes; a manifest is at most {MAX_MANIFEST_BYTES} bytes",
            path=path,
            hint="check that --config points at local-ai.toml",
        )
    text = decode_utf8(raw, path)
    return LoadedManifest(parse_manifest(text, path), path, text)


def decode_utf8(raw: bytes, path: Path) -> str:
    """UTF-8 text; a leading byte-order mark (some Windows editors write one) is dropped."""
    try:
        return raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x})",
            path=path,
            line=line,
            column=column,
            hint="save the file as UTF-8 text",
        ) from None


def parse_toml(text: str, path: Path | None, *, json_hint: str | None = None) -> dict[str, Any]:
    """tomllib with positioned, friendly errors; `json_hint` is the advice for a JSON file."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line = column = None
        if match := _TOML_POS_RE.search(message):
            line, column = int(match.group(1)), int(match.group(2))
            message = message[: match.start()].strip()
        hint = "fix the TOML syntax at that position"
        if text.lstrip("\ufeff \t\r\n").startswith("{"):
            message = f"the file looks like JSON, but it must be TOML ({message})"
            hint = json_hint or "write it in TOML (key = value lines, [tables]): docs/manifest.md"
        elif message.startswith(("Cannot overwrite a value", "Cannot declare")):
            message = "duplicate key or table: it is already defined above"
            hint = "remove or rename one of the two definitions"
        raise ConfigError(
            f"invalid TOML: {message}", path=path, line=line, column=column, hint=hint
        ) from None
    except RecursionError:
        raise ConfigError(
            "invalid TOML: values are nested too deeply", path=path, hint="flatten the nesting"
        ) from None


def parse_manifest(text: str, path: Path | None = None) -> Manifest:
    if not _has_content(text):
        raise ConfigError("the manifest is empty", path=path, hint=_INIT_HINT)
    data = parse_toml(text, path)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        index = index_keys(text)
        problems = [_problem(err, data, index, path) for err in exc.errors()]
        raise ManifestError(problems) from None


def _has_content(text: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def _problem(err: Any, data: dict[str, Any], index: KeyIndex, path: Path | None) -> ConfigError:
    loc: tuple[str | int, ...] = tuple(err["loc"])
    kind: str = err["type"]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ReferenceProblem):
        loc = _parse_key_path(cause.key)
    if "[key]" in loc:
        loc = loc[: loc.index("[key]")]
        alias = loc[-1] if loc else "?"
        noun, example = (
            ("host", "[cluster.hosts.mini]") if "hosts" in loc else ("alias", "[models.qwen3-8b]")
        )
        message = (
            f"{noun} {alias!r} may use letters, digits, '.', '_' and '-' only (no '/'), "
            "up to 64 characters"
        )
        return key_error(message, index, loc, path=path, hint=f"rename the table, e.g. {example}")
    # Pydantic appends the matched branch of a union (e.g. "int") or validator names: drop them.
    loc = tuple(part for part in loc if not (isinstance(part, str) and part in _UNION_TAGS))
    message, hint = _describe(kind, err, loc)
    return key_error(message, index, loc, path=path, hint=hint)


_UNION_TAGS = {
    "int",
    "float",
    "str",
    "bool",
    "list",
    "dict",
    "constrained-float",
    "constrained-int",
}


def _describe(kind: str, err: Any, loc: tuple[str | int, ...]) -> tuple[str, str | None]:
    value = err.get("input")
    ctx = err.get("ctx") or {}
    field = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        name = str(loc[-1]) if loc else "?"
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        message = f"unknown key {name!r}"
        if close:
            return f"{message}; did you mean {close[0]!r}?", None
        return message, f"allowed keys here: {', '.join(allowed)}" if allowed else None
    if kind == "missing":
        return "required key is missing", None
    if kind == "literal_error":
        if loc == ("version",):
            return (
                f"version {value!r} is not supported; this local-ai reads version "
                f"{MANIFEST_VERSION} manifests",
                "upgrade local-ai, or set version = 1",
            )
        choices = ", ".join(str(c).strip("'") for c in _literal_choices(ctx.get("expected", "")))
        noun = _LITERAL_NOUNS.get(field, "allowed value")
        return f"{value!r} is not a {noun}; use one of {choices}", None
    if kind in _EXPECTED_BY_ERROR:
        return f"expected {_EXPECTED_BY_ERROR[kind]}, got {_toml_type(value)} ({value!r})", None
    if kind == "string_pattern_mismatch":
        tail = _PATTERN_HINTS.get(field, f"does not match {ctx.get('pattern')}")
        return f"{value!r} {tail}", None
    if kind == "value_error" and isinstance(ctx.get("error"), ValueError):
        return str(ctx["error"]), None
    bounds = {
        "greater_than_equal": ("must be at least", "ge"),
        "greater_than": ("must be greater than", "gt"),
        "less_than_equal": ("must be at most", "le"),
        "less_than": ("must be less than", "lt"),
    }
    if kind in bounds:
        words, bound = bounds[kind]
        return f"{words} {ctx.get(bound)} (got {value!r})", None
    if kind == "finite_number":
        return f"must be a finite number (got {value!r})", None
    if kind == "int_parsing_size":
        return f"is too large (got {value!r})", None
    if kind == "string_too_short":
        return f"must be at least {ctx.get('min_length')} characters long", None
    return f"{err['msg']} (got {value!r})", None


def _literal_choices(expected: str) -> list[str]:
    # Pydantic writes "'q2', 'q3' or 'auto'"
    return [c.strip() for c in re.split(r",| or ", expected) if c.strip()]


def _toml_type(value: object) -> str:
    for py_type, name in _TOML_TYPE_NAMES.items():
        if type(value) is py_type:
            return name
    return type(value).__name__


def _parse_key_path(key: str) -> tuple[str | int, ...]:
    parts: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", key):
        parts.append(int(index) if index else name)
    return tuple(parts)


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the model found at `loc` (walking dicts and lists along the way)."""
    annotation: Any = Manifest
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field_info = annotation.model_fields.get(str(part))
            if field_info is None:
                return []
            annotation = field_info.annotation
        elif get_origin(annotation) in (dict, list):
            annotation = get_args(annotation)[-1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        members = [a for a in get_args(annotation) if a is not type(None)]
        return _unwrap(members[0]) if len(members) == 1 else annotation
    if origin is typing.Annotated:
        return _unwrap(get_args(annotation)[0])
    return annotation
