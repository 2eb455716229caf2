"""The pure core shared by every client: documents as slots, what local-ai owns, merge, remove
and drift.

A client config is a few files; in each file local-ai owns some *slots* (a key path such as
``("env", "ANTHROPIC_BASE_URL")``, or ``()`` for a whole file). A ledger records, per slot, the
value local-ai wrote and the value it replaced, so removal restores the user's value and leaves
anything the user changed since alone. Nothing here does I/O.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from local_ai.clients import jsonc, tomlkeys, yamlkeys
from local_ai.util.change import Change

Slot = tuple[str, ...]
FormatName = Literal["jsonc", "json-file", "yaml-keys", "toml-keys", "toml-file"]
LEDGER_VERSION = 1


class _Absent:
    """A slot with no value (the key or file does not exist)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


class DocumentError(ValueError):
    """A client file cannot be read or edited; `line`/`column` point at the problem if known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


def same(a: Any, b: Any) -> bool:
    """Equal as JSON (so True != 1 and key order does not matter)."""
    if a is ABSENT or b is ABSENT:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# ------------------------------------------------------------------------------- formats


class Format(Protocol):
    name: FormatName

    def get(self, text: str | None, slot: Slot) -> Any:
        """The value at `slot`, or ABSENT."""

    def set(self, text: str | None, slot: Slot, value: Any) -> tuple[str, list[Slot]]:
        """New text, and the containers the edit created."""

    def delete(self, text: str | None, slot: Slot) -> str | None:
        """New text without `slot` (None: the file goes away)."""

    def prune(self, text: str | None, container: Slot) -> str | None:
        """Remove `container` if it is empty; the text unchanged otherwise."""

    def raw(self, text: str | None, slot: Slot) -> str | None:
        """The value at `slot` exactly as written in the file (None: absent)."""

    def set_raw(self, text: str | None, slot: Slot, raw: str) -> str:
        """Put a value back exactly as it was written (the inverse of `raw`)."""


class JsoncFormat:
    """JSON with comments, edited in place (Zed and Claude Code settings)."""

    name: FormatName = "jsonc"

    @staticmethod
    def _checked(text: str) -> str:
        with _document_errors():
            jsonc.parse(text)
        return text

    def get(self, text: str | None, slot: Slot) -> Any:
        if text is None:
            return ABSENT
        found, value = jsonc.lookup(self._checked(text), slot)
        return value if found else ABSENT

    def set(self, text: str | None, slot: Slot, value: Any) -> tuple[str, list[Slot]]:
        with _document_errors():
            return jsonc.set_value(self._checked(text or ""), slot, value)

    def delete(self, text: str | None, slot: Slot) -> str | None:
        return None if text is None else jsonc.delete(self._checked(text), slot)

    def prune(self, text: str | None, container: Slot) -> str | None:
        if text is None or not jsonc.is_empty_object(text, container):
            return text
        return jsonc.delete_root(text) if container == () else jsonc.delete(text, container)

    def raw(self, text: str | None, slot: Slot) -> str | None:
        return None if text is None else jsonc.raw_value(self._checked(text), slot)

    def set_raw(self, text: str | None, slot: Slot, raw: str) -> str:
        with _document_errors():
            return jsonc.replace_raw(self._checked(text or ""), slot, raw)


class JsonFileFormat:
    """A whole JSON file local-ai owns (Goose's custom provider); the only slot is ``()``."""

    name: FormatName = "json-file"

    def get(self, text: str | None, slot: Slot) -> Any:
        if text is None:
            return ABSENT
        with _document_errors():
            return jsonc.loads(text)

    def set(self, text: str | None, slot: Slot, value: Any) -> tuple[str, list[Slot]]:
        return json.dumps(value, indent=2, ensure_ascii=False) + "\n", []

    def delete(self, text: str | None, slot: Slot) -> str | None:
        return None

    def prune(self, text: str | None, container: Slot) -> str | None:
        return text

    def raw(self, text: str | None, slot: Slot) -> str | None:
        return text

    def set_raw(self, text: str | None, slot: Slot, raw: str) -> str:
        return raw


class YamlKeysFormat:
    """Top-level ``KEY: value`` lines of a YAML file (Goose's config.yaml); slots are (KEY,)."""

    name: FormatName = "yaml-keys"

    def get(self, text: str | None, slot: Slot) -> Any:
        if text is None:
            return ABSENT
        found, value = yamlkeys.get(text, slot[0])
        return value if found else ABSENT

    def set(self, text: str | None, slot: Slot, value: Any) -> tuple[str, list[Slot]]:
        with _document_errors():
            return yamlkeys.set_key(text or "", slot[0], str(value)), []

    def delete(self, text: str | None, slot: Slot) -> str | None:
        return None if text is None else yamlkeys.delete_key(text, slot[0])

    def prune(self, text: str | None, container: Slot) -> str | None:
        return text

    def raw(self, text: str | None, slot: Slot) -> str | None:
        return None if text is None else yamlkeys.raw_value(text, slot[0])

    def set_raw(self, text: str | None, slot: Slot, raw: str) -> str:
        with _document_errors():
            return yamlkeys.set_key(text or "", slot[0], raw, raw=True)


class TomlKeysFormat:
    """Top-level keys and `[a.b]` tables of a TOML file (Codex's config.toml)."""

    name: FormatName = "toml-keys"

    def get(self, text: str | None, slot: Slot) -> Any:
        if text is None:
            return ABSENT
        with _document_errors():
            found, value = tomlkeys.lookup(text, slot)
        return value if found else ABSENT

    def set(self, text: str | None, slot: Slot, value: Any) -> tuple[str, list[Slot]]:
        with _document_errors():
            return tomlkeys.set_value(text or "", slot, value), []

    def delete(self, text: str | None, slot: Slot) -> str | None:
        if text is None:
            return None
        with _document_errors():
            return tomlkeys.delete(text, slot)

    def prune(self, text: str | None, container: Slot) -> str | None:
        return text  # dotted table headers create no container of their own

    def raw(self, text: str | None, slot: Slot) -> str | None:
        if text is None:
            return None
        with _document_errors():
            return tomlkeys.raw(text, slot)

    def set_raw(self, text: str | None, slot: Slot, raw: str) -> str:
        with _document_errors():
            return tomlkeys.set_raw(text or "", slot, raw)


class TomlFileFormat(JsonFileFormat):
    """A whole TOML file of top-level keys local-ai owns (a Codex profile); the slot is ``()``."""

    name: FormatName = "toml-file"

    def get(self, text: str | None, slot: Slot) -> Any:
        if text is None:
            return ABSENT
        with _document_errors():
            return tomlkeys.parse(text)

    def set(self, text: str | None, slot: Slot, value: Any) -> tuple[str, list[Slot]]:
        with _document_errors():
            lines = [f"{tomlkeys.key(k)} = {tomlkeys.scalar(v)}\n" for k, v in value.items()]
        return "".join(lines), []


@contextlib.contextmanager
def _document_errors() -> Iterator[None]:
    """Each file library's error as a DocumentError, with the line and column when known."""
    try:
        yield
    except jsonc.JsoncError as exc:
        raise DocumentError(exc.problem, exc.line, exc.column) from None
    except tomlkeys.TomlKeysError as exc:
        raise DocumentError(str(exc), exc.line, exc.column) from None
    except (jsonc.JsoncEditError, yamlkeys.YamlKeysError) as exc:
        raise DocumentError(str(exc)) from None


FORMATS: dict[FormatName, Format] = {
    "jsonc": JsoncFormat(),
    "json-file": JsonFileFormat(),
    "yaml-keys": YamlKeysFormat(),
    "toml-keys": TomlKeysFormat(),
    "toml-file": TomlFileFormat(),
}


# -------------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class Owned:
    """One slot local-ai wrote: the value it wrote and the value it replaced."""

    slot: Slot
    wrote: Any
    previous: Any = ABSENT
    previous_raw: str | None = None  # the replaced value as written, to put back byte for byte

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"slot": list(self.slot), "wrote": self.wrote}
        if self.previous is not ABSENT:
            out["previous"] = self.previous
            if self.previous_raw is not None:
                out["previous_raw"] = self.previous_raw
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Owned:
        previous = data.get("previous", ABSENT)
        raw = data.get("previous_raw")
        return cls(
            tuple(data["slot"]), data["wrote"], previous, raw if isinstance(raw, str) else None
        )


@dataclass(frozen=True)
class FileRecord:
    """What local-ai owns in one file."""

    path: str
    format: FormatName
    created_file: bool = False
    created: tuple[Slot, ...] = ()  # containers local-ai created (pruned when left empty)
    owned: tuple[Owned, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "created_file": self.created_file,
            "created": [list(c) for c in self.created],
            "owned": [o.to_json() for o in self.owned],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileRecord:
        fmt = data["format"]
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        return cls(
            path=str(data["path"]),
            format=fmt,
            created_file=bool(data.get("created_file", False)),
            created=tuple(tuple(c) for c in data.get("created", [])),
            owned=tuple(Owned.from_json(o) for o in data.get("owned", [])),
        )


@dataclass(frozen=True)
class Ledger:
    """Everything local-ai wrote for one client (kept in LOCAL_AI_HOME/clients/<client>.json)."""

    client: str
    files: tuple[FileRecord, ...] = ()

    def file(self, path: str) -> FileRecord | None:
        return next((f for f in self.files if f.path == path), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": LEDGER_VERSION,
            "client": self.client,
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ledger:
        if data.get("version") != LEDGER_VERSION:
            raise ValueError(f"unsupported ledger version {data.get('version')!r}")
        return cls(str(data["client"]), tuple(FileRecord.from_json(f) for f in data["files"]))


# ------------------------------------------------------------------------ merge / remove


def _restore(fmt: Format, text: str | None, owned: Owned) -> str | None:
    """Put back the user's value, unless the user changed the slot since local-ai wrote it."""
    if not same(fmt.get(text, owned.slot), owned.wrote):
        return text
    if owned.previous is ABSENT:
        return fmt.delete(text, owned.slot)
    if owned.previous_raw is not None:
        restored = fmt.set_raw(text, owned.slot, owned.previous_raw)
        if same(fmt.get(restored, owned.slot), owned.previous):
            return restored
    return fmt.set(text, owned.slot, owned.previous)[0]


def merge(
    fmt: Format,
    path: str,
    text: str | None,
    desired: Mapping[Slot, Any],
    record: FileRecord | None,
) -> tuple[str | None, FileRecord | None]:
    """The file with every desired slot set and every formerly owned slot restored, plus the
    new record. Pure. With an empty `desired` this is removal."""
    owned = {o.slot: o for o in record.owned} if record else {}
    created = list(record.created) if record else []
    created_file = text is None or (record is not None and record.created_file)
    for slot, was in owned.items():
        if slot not in desired:
            text = _restore(fmt, text, was)
    new_owned: list[Owned] = []
    for slot, value in desired.items():
        current = fmt.get(text, slot)
        old = owned.get(slot)
        if old is not None and same(current, old.wrote):
            previous, raw = old.previous, old.previous_raw
        else:  # first write, or the user changed the value since: theirs now
            previous, raw = current, None if current is ABSENT else fmt.raw(text, slot)
        if not same(current, value):
            text, made = fmt.set(text, slot, value)
            created += [c for c in made if c not in created]
        new_owned.append(Owned(slot, value, previous, raw))
    # Deepest first, so a parent empties once its children are gone.
    for container in sorted(created, key=len, reverse=True):
        text = fmt.prune(text, container)
    if not desired:
        if created_file and text is not None and text.strip() == "":
            text = None
        return text, None
    kept = tuple(c for c in created if _exists(fmt, text, c))
    return text, FileRecord(path, fmt.name, created_file, kept, tuple(new_owned))


def _exists(fmt: Format, text: str | None, container: Slot) -> bool:
    if text is None:
        return False
    if container == ():
        return jsonc.parse(text) is not None  # only JSONC documents get a created root
    return fmt.get(text, container) is not ABSENT


# --------------------------------------------------------------------------------- drift


def _label(prefix: str, slot: Slot, parts: Iterable[Any] = ()) -> str:
    """`file: key.path[0].sub`, or the part that applies."""
    out = ""
    for part in (*slot, *parts):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    if prefix:
        return f"{prefix}: {out}" if out else prefix
    return out or "(file)"


def _mask(value: Any) -> str:
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]
    return f"<secret {digest}>"


def _show(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def drift(
    fmt: Format,
    text: str | None,
    desired: Mapping[Slot, Any],
    record: FileRecord | None,
    secret: frozenset[Slot] = frozenset(),
    prefix: str = "",
) -> list[str]:
    """Human-readable differences between the file and what local-ai wants in it:
    ``+ path: value`` (missing), ``- path`` (to remove or restore), ``~ path: old → new``."""
    lines: list[str] = []
    changed: list[tuple[Slot, Any, Any]] = []
    for slot, value in desired.items():
        have = fmt.get(text, slot)
        if same(have, value):
            continue
        label = _label(prefix, slot)
        if slot in secret:
            have, value = (ABSENT if have is ABSENT else _mask(have)), _mask(value)
        if have is ABSENT:
            lines.append(f"+ {label}: {_show(value)}")
        else:
            changed.append((slot, have, value))
    if record is not None:
        for owned in record.owned:
            if owned.slot not in desired and same(fmt.get(text, owned.slot), owned.wrote):
                what = "remove" if owned.previous is ABSENT else "restore the previous value"
                lines.append(f"- {_label(prefix, owned.slot)} ({what})")
    if changed:
        from deepdiff import DeepDiff  # heavy (~0.7 s): only when a value differs

        for slot, have, value in changed:
            diff = DeepDiff(have, value, view="tree", verbose_level=2)
            for report in diff.values():
                for level in report:
                    where = _label(prefix, slot, level.path(output_format="list"))
                    if type(level.t1).__name__ == "NotPresent":
                        lines.append(f"+ {where}: {_show(level.t2)}")
                    elif type(level.t2).__name__ == "NotPresent":
                        lines.append(f"- {where}: {_show(level.t1)}")
                    else:
                        lines.append(f"~ {where}: {_show(level.t1)} → {_show(level.t2)}")
    return sorted(lines, key=lambda line: (line[2:], line[0]))


# --------------------------------------------------------------------------- plan output


@dataclass(frozen=True)
class FileEdit:
    """One file before and after (None: absent / to be deleted)."""

    path: Path
    before: str | None
    after: str | None
    backup: bool = True  # False when removing a file local-ai created (its content was ours)

    @property
    def changed(self) -> bool:
        return self.before != self.after

    @property
    def action(self) -> str:
        if not self.changed:
            return "unchanged"
        if self.before is None:
            return "create"
        return "delete" if self.after is None else "update"


@dataclass(frozen=True)
class ClientChange:
    """What planning decided for one client: the reconciler turns it into a WRITE_CLIENT action."""

    client: str  # "zed", "claude-code", "goose"
    resource: str  # "client.zed"
    change: Change
    cause: str  # for NOOP: why nothing is done
    drift: tuple[str, ...] = ()
    edits: tuple[FileEdit, ...] = ()
    ledger: Ledger | None = None  # what local-ai owns afterwards (None: nothing)
    ledger_changed: bool = False
    notes: tuple[str, ...] = ()  # what the user still has to do (environment variables)
    secrets: tuple[str, ...] = field(default=(), repr=False)  # values to mask when printing
    error: str | None = None  # the client cannot be planned; nothing will be written

    @property
    def has_changes(self) -> bool:
        return self.error is None and (any(e.changed for e in self.edits) or self.ledger_changed)

    def to_json(self) -> dict[str, Any]:
        """For `--json` output and plan files: what changes, never file contents or secrets."""

        return {
            "client": self.client,
            "resource": self.resource,
            "change": self.change.value,
            "cause": self.cause,
            "drift": list(self.drift),
            "files": [
                {
                    "path": str(e.path),
                    "action": e.action,
                    "backup": e.backup and e.changed and e.before is not None,
                }
                for e in self.edits
            ],
            "notes": list(self.notes),
            "error": self.error,
        }

    def to_saved(self) -> dict[str, Any]:
        """Everything apply needs to make exactly these edits (a saved plan; file contents
        included, so plan files are written 0600)."""
        return self.to_json() | {
            "edits": [
                {"path": str(e.path), "before": e.before, "after": e.after, "backup": e.backup}
                for e in self.edits
            ],
            "ledger": self.ledger.to_json() if self.ledger else None,
            "ledger_changed": self.ledger_changed,
            "secrets": list(self.secrets),
        }

    @classmethod
    def from_saved(cls, data: Mapping[str, Any]) -> ClientChange:
        ledger = data["ledger"]
        return cls(
            client=str(data["client"]),
            resource=str(data["resource"]),
            change=Change(data["change"]),
            cause=str(data["cause"]),
            drift=tuple(str(line) for line in data["drift"]),
            edits=tuple(
                FileEdit(Path(e["path"]), e["before"], e["after"], bool(e["backup"]))
                for e in data["edits"]
            ),
            ledger=Ledger.from_json(ledger) if ledger is not None else None,
            ledger_changed=bool(data["ledger_changed"]),
            notes=tuple(str(n) for n in data["notes"]),
            secrets=tuple(str(s) for s in data["secrets"]),
            error=None if data["error"] is None else str(data["error"]),
        )

    def masked(self, text: str) -> str:
        """`text` with this change's secret values replaced."""
        for secret in self.secrets:
            text = text.replace(secret, "<secret>")
        return text
