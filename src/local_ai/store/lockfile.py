"""`local-ai.lock`: what each manifest model resolved to, so another machine (or a later apply)
gets exactly the same bytes.

TOML next to the manifest, meant to be committed with it. Per alias: the resolved source (repo,
revision asked, commit, every file with size and sha256 or git blob id), the recipe (quantize
level, group size) and the versions of mlx, mlx-lm and the converter. Written atomically, with a
deterministic layout (aliases and files sorted) so diffs show only real changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from local_ai import __version__, settings
from local_ai.errors import ConfigError, NotFoundError
from local_ai.manifest.load import decode_utf8, parse_toml
from local_ai.manifest.locate import index_keys, key_error
from local_ai.manifest.models import (
    ALIAS_PATTERN,
    REPO_PATTERN,
    Manifest,
    ModelSpec,
    QuantizeLevel,
)
from local_ai.manifest.source import (
    DEFAULT_REVISION,
    Format,
    Quantization,
    ResolvedSource,
    SourceFile,
)
from local_ai.util.atomic import atomic_write_text
from local_ai.util.names import name_problem

LOCK_VERSION: Literal[1] = 1
MAX_LOCK_BYTES = 16 * 1024 * 1024
_REWRITE_HINT = "run `local-ai lock` to rewrite it from local-ai.toml"
_HEADER = (
    "# local-ai.lock: the exact source of every model in local-ai.toml (commit, files, hashes).\n"
    "# Written by `local-ai lock`; commit it next to local-ai.toml. Edit local-ai.toml, not this.\n"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LockedFile(_Strict):
    name: str
    size: Annotated[int, Field(ge=0)]
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    blob_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$")

    @model_validator(mode="after")
    def _check(self) -> LockedFile:
        problem = name_problem(self.name)
        if problem is not None:
            raise ValueError(f"file name {self.name!r} {problem}")
        return self


class LockedQuantization(_Strict):
    bits: int | None = None
    group_size: int | None = None
    mode: str | None = None


class Recipe(_Strict):
    """How local-ai converts the source (nothing when served as published)."""

    quantize: QuantizeLevel | None = None
    group_size: int | None = None
    # For quantize = "auto": the level chosen on the machine that wrote the lock (None: the MLX
    # source is served as published).
    chosen: QuantizeLevel | None = None


class Versions(_Strict):
    converter: str
    mlx: str | None = None
    mlx_lm: str | None = None


class LockEntry(_Strict):
    kind: Literal["repo", "path"]
    format: Literal["mlx", "safetensors", "gguf"]
    repo: str | None = Field(default=None, pattern=REPO_PATTERN)
    revision: str | None = None
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$")
    file: str | None = None
    path: str | None = None  # as written in the manifest
    base_model: str | None = None
    extra_files: list[str] = Field(default_factory=list)
    quantization: LockedQuantization | None = None
    recipe: Recipe = Field(default_factory=Recipe)
    versions: Versions
    files: list[LockedFile] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> LockEntry:
        if self.kind == "repo" and (self.repo is None or self.commit is None):
            raise ValueError("a repo entry needs `repo` and `commit`")
        if self.kind == "path" and self.path is None:
            raise ValueError("a path entry needs `path`")
        if self.file is not None and name_problem(self.file) is not None:
            raise ValueError(f"file {self.file!r} {name_problem(self.file)}")
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError("a file is listed twice")
        return self

    @property
    def source_label(self) -> str:
        if self.kind == "path":
            return str(self.path)
        label = str(self.repo) + (f":{self.file}" if self.file else "")
        return label + f"@{(self.commit or '')[:12]}"

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


class LockFile(_Strict):
    version: Literal[1] = LOCK_VERSION
    models: dict[Annotated[str, Field(pattern=ALIAS_PATTERN)], LockEntry] = Field(
        default_factory=dict
    )


# ---- conversions ----------------------------------------------------------------------------


def current_versions() -> Versions:
    """Installed versions, read from package metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    def get(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return Versions(converter=__version__, mlx=get("mlx"), mlx_lm=get("mlx-lm"))


def recipe_of(spec: ModelSpec) -> Recipe:
    if spec.quantize is None:
        return Recipe()
    return Recipe(quantize=spec.quantize, group_size=spec.group_size)


def entry_from_resolved(
    resolved: ResolvedSource,
    spec: ModelSpec,
    *,
    sha256s: Mapping[str, str] | None = None,
    versions: Versions | None = None,
    before: LockEntry | None = None,
    chosen: str | None = None,
) -> LockEntry:
    """The lock entry for `resolved`. Files known only by git blob id get the sha256 of their
    bytes from the `sha256s` a fetch verified (by file name), or from the entry `before` when
    it pinned the same file. `chosen`: the level `quantize = "auto"` chose here."""
    # Not for a local path: its files' identity is their sha256, unknown when first planned, so
    # recording it would move the digest of what was built (and copied to hosts) from under it.
    if resolved.kind != "path":
        resolved = resolved.with_sha256s(sha256s or {})
    quant = resolved.quantization
    recipe = recipe_of(spec)
    if chosen is not None:
        recipe = recipe.model_copy(update={"chosen": chosen})
    entry = LockEntry(
        kind=resolved.kind,
        format=resolved.format,
        repo=resolved.repo,
        revision=resolved.revision,
        commit=resolved.commit,
        file=resolved.file,
        path=spec.path if resolved.kind == "path" else None,
        base_model=resolved.base_model,
        extra_files=list(resolved.extra_files),
        quantization=(
            LockedQuantization(bits=quant.bits, group_size=quant.group_size, mode=quant.mode)
            if quant is not None and quant != Quantization()
            else None
        ),
        recipe=recipe,
        versions=versions or current_versions(),
        files=[
            LockedFile(name=f.name, size=f.size, sha256=f.sha256, blob_id=f.blob_id)
            for f in sorted(resolved.files, key=lambda f: f.name)
        ],
    )
    return entry if before is None else _keep_learned_hashes(entry, before)


def resolved_from_entry(
    alias: str, entry: LockEntry, *, base_dir: Path | None = None
) -> ResolvedSource:
    """The source a lock entry pins, ready for `hub.fetch.fetch` (no network needed)."""
    path = None
    if entry.kind == "path":
        assert entry.path is not None
        raw = Path(entry.path).expanduser()
        path = str(raw if raw.is_absolute() else (base_dir or Path.cwd()) / raw)
    quant = entry.quantization
    fmt: Format = entry.format
    return ResolvedSource(
        alias=alias,
        kind=entry.kind,
        format=fmt,
        files=tuple(
            SourceFile(name=f.name, size=f.size, sha256=f.sha256, blob_id=f.blob_id)
            for f in entry.files
        ),
        repo=entry.repo,
        revision=entry.revision,
        commit=entry.commit,
        file=entry.file,
        path=path,
        quantization=(
            Quantization(bits=quant.bits, group_size=quant.group_size, mode=quant.mode)
            if quant is not None
            else None
        ),
        base_model=entry.base_model,
        extra_files=tuple(entry.extra_files),
    )


LockField = Literal[
    "entry", "kind", "repo", "file", "revision", "path", "extra_files", "quantize", "group size"
]


@dataclass(frozen=True)
class Difference:
    """One field on which the manifest and its lock entry disagree."""

    field: LockField
    locked: object = None
    wanted: object = None

    @property
    def of_recipe(self) -> bool:
        """Only how the source is converted moved: the same source rebuilds, no new resolve."""
        return self.field in ("quantize", "group size")

    def __str__(self) -> str:
        if self.field == "entry":
            return "not in the lock file"
        what = "source" if self.field == "kind" else self.field
        return f"{what} changed ({_show(self.locked)} → {_show(self.wanted)})"


@dataclass(frozen=True)
class LockMatch:
    """Whether a manifest entry and its lock entry agree; `differences` says where not."""

    differences: tuple[Difference, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.differences

    @property
    def source_moved(self) -> bool:
        return any(not d.of_recipe for d in self.differences)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(str(d) for d in self.differences)

    def __bool__(self) -> bool:
        return self.ok


def lock_matches(spec: ModelSpec, entry: LockEntry | None) -> LockMatch:
    """Compare what the manifest asks for with what the lock pinned (no I/O)."""
    if entry is None:
        return LockMatch((Difference("entry"),))
    found: list[Difference] = []

    def differs(what: LockField, want: object, have: object) -> None:
        if want != have:
            found.append(Difference(what, have, want))

    kind = "path" if spec.path is not None else "repo"
    if kind != entry.kind:
        return LockMatch((Difference("kind", entry.kind, kind),))
    if kind == "repo":
        differs("repo", spec.repo, entry.repo)
        differs("file", spec.file, entry.file)
        differs("revision", spec.revision or DEFAULT_REVISION, entry.revision)
    else:
        differs("path", spec.path, entry.path)
    differs("extra_files", sorted(spec.extra_files), sorted(entry.extra_files))
    want = recipe_of(spec)
    differs("quantize", want.quantize, entry.recipe.quantize)
    if want.quantize is not None and entry.recipe.quantize is not None:
        differs("group size", want.group_size, entry.recipe.group_size)
    return LockMatch(tuple(found))


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


# ---- reading --------------------------------------------------------------------------------


def load_lock(path: Path, *, missing_ok: bool = True) -> LockFile:
    """The lock file at `path`; an empty one when absent (unless `missing_ok` is False)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return LockFile()
        raise NotFoundError(
            f"no lock file at {path}",
            hint="run `local-ai lock` to create it (then commit it with local-ai.toml)",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", path=path) from None
    if len(raw) > MAX_LOCK_BYTES:
        raise ConfigError(
            f"is {len(raw)} bytes; a lock file is at most {MAX_LOCK_BYTES}", path=path
        )
    return parse_lock(decode_utf8(raw, path), path)


def parse_lock(text: str, path: Path | None = None) -> LockFile:
    data = parse_toml(text, path, json_hint=_REWRITE_HINT)
    version = data.get("version")
    if isinstance(version, int) and version != LOCK_VERSION:
        raise ConfigError(
            f"lock file version {version} is not supported; this local-ai reads version "
            f"{LOCK_VERSION}",
            path=path,
            key="version",
            hint="upgrade local-ai, or " + _REWRITE_HINT,
        )
    try:
        return LockFile.model_validate(data)
    except ValidationError as exc:
        raise _positioned(exc, text, path) from None


def _positioned(exc: ValidationError, text: str, path: Path | None) -> ConfigError:
    index = index_keys(text)
    errors = exc.errors()
    first = errors[0]
    loc: tuple[str | int, ...] = tuple(
        p for p in first["loc"] if not (isinstance(p, str) and p.startswith(("function-", "[")))
    )
    message = _describe(first)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return key_error(message, index, loc, path=path, hint=_REWRITE_HINT)


def _describe(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    value = err.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "string_pattern_mismatch":
        return f"{value!r} is not valid here"
    if kind == "value_error":
        return str(err.get("ctx", {}).get("error", err["msg"]))
    return f"{err['msg']} (got {value!r})"


# ---- writing --------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; DEL must be escaped in TOML too.
    return json.dumps(value, ensure_ascii=True).replace("\x7f", "\\u007f")


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to the lock file")


def _table(lines: list[str], header: str, values: Mapping[str, object]) -> None:
    present = {k: v for k, v in values.items() if v is not None}
    if not present:
        return
    lines += ["", header]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in present.items()]


def render_lock(lock: LockFile) -> str:
    """Deterministic TOML: aliases and files sorted, None values left out."""
    lines = [_HEADER.rstrip("\n"), f"version = {lock.version}"]
    for alias in sorted(lock.models):
        entry = lock.models[alias]
        base = f"models.{_key(alias)}"
        _table(
            lines,
            f"[{base}]",
            {
                "kind": entry.kind,
                "format": entry.format,
                "repo": entry.repo,
                "revision": entry.revision,
                "commit": entry.commit,
                "file": entry.file,
                "path": entry.path,
                "base_model": entry.base_model,
                "extra_files": sorted(entry.extra_files) or None,
            },
        )
        if entry.quantization is not None:
            _table(lines, f"[{base}.quantization]", entry.quantization.model_dump())
        _table(lines, f"[{base}.recipe]", entry.recipe.model_dump())
        _table(lines, f"[{base}.versions]", entry.versions.model_dump())
        for item in sorted(entry.files, key=lambda f: f.name):
            _table(lines, f"[[{base}.files]]", item.model_dump())
    return "\n".join(lines) + "\n"


def save_lock(path: Path, lock: LockFile) -> bool:
    """Write `lock` atomically; returns False (and leaves the file alone) when nothing changed."""
    text = render_lock(lock)
    try:
        if path.read_text("utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True


def lock_path_for(manifest: Path) -> Path:
    return settings.lock_path(manifest)


# ---- refreshing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LockChange:
    """What `refresh_lock` did for one alias: "added", "updated", "upgraded", "kept" or
    "removed", with the commits before and after and why."""

    alias: str
    action: Literal["added", "updated", "upgraded", "kept", "removed"]
    before: LockEntry | None
    after: LockEntry | None
    reasons: tuple[str, ...] = ()


class Resolver(Protocol):
    def __call__(self, alias: str, spec: ModelSpec, *, offline: bool) -> ResolvedSource: ...


def refresh_lock(
    manifest: Manifest,
    lock: LockFile,
    *,
    resolver: Resolver,
    upgrade: bool = False,
    only: Sequence[str] = (),
    offline: bool = False,
    versions: Versions | None = None,
) -> tuple[LockFile, list[LockChange]]:
    """The lock `manifest` needs. Entries that still match the manifest are kept as they are
    (no network); others, and with `upgrade` every selected one, are resolved again. `only`
    restricts the aliases considered; without it, entries of removed aliases are dropped."""
    unknown = [alias for alias in only if alias not in manifest.models]
    if unknown:
        declared = ", ".join(manifest.models) or "none"
        raise NotFoundError(
            f"{', '.join(repr(a) for a in unknown)} not in local-ai.toml (declared: {declared})",
            hint="name aliases declared under [models.<alias>]",
        )
    selected = set(only) if only else set(manifest.models)
    versions = versions or current_versions()
    models = dict(lock.models)
    changes: list[LockChange] = []
    for alias, spec in manifest.models.items():
        before = lock.models.get(alias)
        if alias not in selected:
            continue
        match = lock_matches(spec, before)
        if match.ok and not upgrade:
            changes.append(LockChange(alias, "kept", before, before))
            continue
        resolved = resolver(alias, spec, offline=offline)
        after = entry_from_resolved(resolved, spec, versions=versions, before=before)
        action: Literal["added", "updated", "upgraded", "kept"]
        reasons: tuple[str, ...] = ()
        if before is not None and match.ok:
            action = "upgraded" if after.commit != before.commit else "kept"
        else:
            action = "added" if before is None else "updated"
            reasons = match.reasons if before is not None else ()
        models[alias] = after
        changes.append(LockChange(alias, action, before, after, reasons))
    if not only:
        for alias in sorted(set(lock.models) - set(manifest.models)):
            models.pop(alias)
            changes.append(LockChange(alias, "removed", lock.models[alias], None))
    return LockFile(models=models), changes


def _keep_learned_hashes(after: LockEntry, before: LockEntry) -> LockEntry:
    """Carry over sha256s that a fetch learned for files the hub knows by git blob id only,
    when the file is the same one (same name, size and blob id)."""
    known = {(f.name, f.size, f.blob_id): f.sha256 for f in before.files if f.sha256}
    files = [
        f.model_copy(update={"sha256": known.get((f.name, f.size, f.blob_id))})
        if f.sha256 is None and f.blob_id is not None
        else f
        for f in after.files
    ]
    return after.model_copy(update={"files": files})
