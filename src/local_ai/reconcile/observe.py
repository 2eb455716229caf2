"""One snapshot of what is: state.json, the store, local-ai.lock, the HF cache, the running
server and this machine. All of `plan`'s I/O happens here; the planner then decides without any.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from local_ai import settings
from local_ai.errors import LocalAIError
from local_ai.hub.source import ResolvedSource, SourceFile
from local_ai.manifest.load import LoadedManifest
from local_ai.manifest.models import ModelSpec
from local_ai.reconcile.model import (
    ClientView,
    InstalledView,
    LockedFile,
    LockedModel,
    Observed,
    ServerView,
    install_fields,
)
from local_ai.store.layout import Store
from local_ai.store.lockfile import LockEntry, LockFile, load_lock, lock_matches, lock_path_for
from local_ai.store.state import InstalledModel, State, load_state

# Bits per weight of common GGUF quantization names, for size estimates only.
_GGUF_BITS = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K": 5.7,
    "Q5_0": 5.5, "Q5_1": 6.0, "Q4_K": 4.8, "Q4_0": 4.5, "Q4_1": 5.0, "Q3_K": 3.9, "Q2_K": 3.0,
    "IQ4_XS": 4.3, "IQ4_NL": 4.5, "IQ3_M": 3.7, "IQ3_XXS": 3.1, "IQ2_M": 2.7, "IQ2_XXS": 2.1,
}  # fmt: skip
_GGUF_QUANT_RE = re.compile(r"(?i)(?<![A-Z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?![A-Z0-9])")


@dataclass
class Snapshot:
    """What `observe` saw: the planner's input plus what apply needs to act on it."""

    loaded: LoadedManifest
    observed: Observed
    lock: LockFile
    lock_path: Path
    state: State
    sources: dict[str, ResolvedSource] = field(default_factory=dict)  # alias -> source to use
    fresh: dict[str, ResolvedSource] = field(default_factory=dict)  # resolved now, not locked
    client_changes: dict[str, Any] = field(default_factory=dict)  # resource -> ClientChange


def observe(
    loaded: LoadedManifest,
    *,
    offline: bool = False,
    frozen: bool = False,
    targets: tuple[str, ...] = (),
) -> Snapshot:
    manifest = loaded.manifest
    paths = settings.paths()
    state = load_state(paths.state_file)
    lock_path = lock_path_for(loaded.path)
    lock = load_lock(lock_path)
    base_dir = loaded.path.parent

    locked: dict[str, LockedModel] = {}
    resolved: dict[str, LockedModel] = {}
    unresolved: dict[str, str] = {}
    sources: dict[str, ResolvedSource] = {}
    fresh: dict[str, ResolvedSource] = {}
    for alias, spec in manifest.models.items():
        if targets and alias not in targets:
            continue
        entry = lock.models.get(alias)
        if entry is not None:
            locked[alias] = _locked_view(alias, spec, entry, base_dir)
            if _source_matches(spec, entry):
                from local_ai.store.lockfile import resolved_from_entry

                sources[alias] = resolved_from_entry(alias, entry, base_dir=base_dir)
                continue
        if frozen:
            continue  # the planner reports the disagreement
        try:
            source = _resolve(alias, spec, offline=offline, base_dir=base_dir)
        except LocalAIError as exc:
            unresolved[alias] = str(exc) + (f" ({exc.hint})" if exc.hint else "")
            continue
        sources[alias] = fresh[alias] = source
        resolved[alias] = _view_of(alias, spec, source, base_dir)

    cached = frozenset(alias for alias, source in sources.items() if _complete_in_cache(source))
    store = Store(paths)
    digests = frozenset(entry.digest for entry in store.entries())
    installed = {alias: _installed_view(model) for alias, model in state.models.items()}

    from local_ai.hardware import detect

    hardware = detect()
    client_changes, client_views = observe_clients(loaded) if not targets else ({}, ())
    hosts = {}
    placed = [a for a, s in manifest.models.items() if s.hosts and (not targets or a in targets)]
    if manifest.cluster is not None and placed:
        from local_ai.cluster.observe import observe_hosts

        hosts = observe_hosts(manifest.cluster)
    observed = Observed(
        state_serial=state.serial,
        installed=installed,
        lock=locked,
        resolved=resolved,
        unresolved=unresolved,
        cached=cached,
        store_digests=digests,
        server=observe_server(),
        usable_memory=hardware.usable_memory_bytes,
        machine=hardware.describe(),
        clients=client_views,
        hosts=hosts,
    )
    return Snapshot(loaded, observed, lock, lock_path, state, sources, fresh, client_changes)


def observe_clients(loaded: LoadedManifest) -> tuple[dict[str, Any], tuple[ClientView, ...]]:
    """Read the client config files and plan their edits (pure over what was read)."""
    from local_ai.clients import plan as clients

    manifest = loaded.manifest
    base_dir = loaded.path.parent
    try:
        seen = clients.observe_clients(manifest, base_dir=base_dir)
    except LocalAIError as exc:
        view = ClientView(
            "clients", False, "", error=str(exc) + (f" ({exc.hint})" if exc.hint else "")
        )
        return {}, (view,)
    changes = clients.plan_clients(manifest, None, seen)
    fingerprint = seen.fingerprint()
    views = tuple(
        ClientView(
            resource=c.resource,
            changes=c.has_changes,
            cause=c.cause,
            delete=c.change.value == "-",
            error=c.error,
            files_fingerprint=fingerprint,
        )
        for c in changes
    )
    return {c.resource: c for c in changes}, views


def _resolve(alias: str, spec: ModelSpec, *, offline: bool, base_dir: Path) -> ResolvedSource:
    from local_ai.hub.resolve import resolve

    return resolve(alias, spec, offline=offline, base_dir=base_dir)


def _source_matches(spec: ModelSpec, entry: LockEntry) -> bool:
    """The lock pins the source the manifest names (the recipe may differ: that rebuilds from
    the same source, it needs no new resolution)."""
    reasons = lock_matches(spec, entry).reasons
    return not [r for r in reasons if not r.startswith(("quantize", "group size"))]


# ---- sources as the planner sees them -------------------------------------------------------


def _locked_view(alias: str, spec: ModelSpec, entry: LockEntry, base_dir: Path) -> LockedModel:
    from local_ai.store.lockfile import resolved_from_entry

    view = _view_of(alias, spec, resolved_from_entry(alias, entry, base_dir=base_dir), base_dir)
    if _source_matches(spec, entry):
        return view
    # Show the lock's own source so the planner names what moved.
    return replace(
        view,
        repo=entry.repo,
        file=entry.file,
        path=entry.path,
        revision=_revision(entry.revision),
    )


def _revision(revision: str | None) -> str | None:
    return None if revision in (None, "main") else revision


def _view_of(alias: str, spec: ModelSpec, source: ResolvedSource, base_dir: Path) -> LockedModel:
    config = _config_of(source)
    layers = _int(config.get("num_hidden_layers"))
    heads = _int(config.get("num_attention_heads"))
    kv_heads = _int(config.get("num_key_value_heads")) or heads
    head_dim = _int(config.get("head_dim"))
    hidden = _int(config.get("hidden_size"))
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    quant = source.quantization
    label = quant.label if quant is not None and quant.bits else None
    return LockedModel(
        alias=alias,
        repo=source.repo,
        file=source.file,
        path=spec.path if source.kind == "path" else None,
        revision=_revision(source.revision) if source.kind == "repo" else None,
        commit=source.commit,
        format=source.format,
        files=tuple(LockedFile(f.name, f.size, _identity(f)) for f in source.files),
        source_quantization=label or _gguf_quant(source.file),
        source_bits=_source_bits(source, config),
        num_layers=layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        base_model=source.base_model,
        model_type=config["model_type"] if isinstance(config.get("model_type"), str) else None,
    )


def _identity(file: SourceFile) -> str | None:
    """A content identity that does not change once a fetch learns a git file's sha256: the
    git blob id when the hub gave one, else the sha256 (local files)."""
    return f"git-{file.blob_id}" if file.blob_id else file.sha256


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _gguf_quant(file: str | None) -> str | None:
    if not file:
        return None
    match = _GGUF_QUANT_RE.search(Path(file).stem)
    return match.group(1).upper() if match else None


def gguf_bits(file_name: str | None) -> float | None:
    """Bits per weight a GGUF file's name announces (Q4_K_M → about 4.8), for estimates."""
    name = _gguf_quant(file_name)
    if name is None:
        return None
    return next((bits for key, bits in _GGUF_BITS.items() if name.startswith(key)), None)


def _source_bits(source: ResolvedSource, config: dict[str, Any]) -> float | None:
    """Bits per weight of the source as stored, for size estimates: fp8 and mxfp4 originals
    are not 16-bit (their config.json says so)."""
    quant = source.quantization
    if quant is not None and quant.bits:
        return quant.bits + 32 / (quant.group_size or 64)
    if source.format == "gguf":
        return gguf_bits(source.file)
    from local_ai.discovery.names import config_quant

    label = config_quant(config)
    return label.bits if label is not None else 16.0


def _config_of(source: ResolvedSource) -> dict[str, Any]:
    """config.json of the source when it is on disk already (resolve fetched it); else {}."""
    directory = _source_dir(source)
    if directory is None:
        return {}
    try:
        data = json.loads((directory / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _source_dir(source: ResolvedSource) -> Path | None:
    if source.kind == "path":
        path = Path(source.path or "")
        return path if path.is_dir() else path.parent
    if source.repo is None or source.commit is None:
        return None
    from local_ai.hub.resolve import repo_cache_dir

    return repo_cache_dir(source.repo) / "snapshots" / source.commit


def _complete_in_cache(source: ResolvedSource) -> bool:
    from local_ai.hub.fetch import is_cached

    try:
        return is_cached(source)
    except LocalAIError:  # an unusable repo id or commit: fetch reports it
        return False


# ---- what is installed ----------------------------------------------------------------------


def _installed_view(model: InstalledModel) -> InstalledView:
    return InstalledView(
        alias=model.alias,
        spec_key=model.spec_fingerprint,
        spec=dict(model.spec),
        commit=model.commit,
        location=model.location,
        location_kind=model.location_kind,
        size_bytes=model.size_bytes,
        present=(drift := installed_drift(model)) is None,
        drift=drift,
        rejected=model.rejected,
    )


def installed_drift(model: InstalledModel) -> str | None:
    """What changed on disk since install (by stat: sizes and mtimes), or None when intact."""
    location = Path(model.location)
    if not location.exists():
        return f"{model.location_kind} entry missing on disk ({location})"
    base = location.parent if location.is_file() else location
    for name, record in sorted(model.files.items()):
        path = location if location.is_file() and name == location.name else base / name
        try:
            stat = path.stat()
        except OSError:
            return f"{name} missing on disk"
        if stat.st_size != record.size:
            return f"{name} changed on disk ({record.size} → {stat.st_size} bytes)"
    return None


def spec_record(spec: ModelSpec) -> dict[str, Any]:
    return install_fields(spec)


# ---- the running server ---------------------------------------------------------------------


def observe_server() -> ServerView:
    from local_ai.server.daemon import admin_request, running_server

    info, alive = running_server()
    if info is None or not alive:
        return ServerView(running=False)
    try:
        live = admin_request(info, "GET", "/api/status", timeout=5.0)
    except Exception:  # an unresponsive server: planned as a restart
        return ServerView(running=True, pid=info.pid, gateway={"unresponsive": True})
    current = live.get("settings") or {}
    return ServerView(
        running=True,
        pid=info.pid,
        gateway=dict(current.get("gateway") or {}),
        engine=dict(current.get("engine") or {}),
        aliases_hash=current.get("aliases_hash"),
        aliases=tuple(m.get("alias", "") for m in live.get("models") or []),
        rolled_back_to=_rolled_back_to(),
    )


def _rolled_back_to() -> int | None:
    """The generation served, when `rollback` left it older than the newest one."""
    from local_ai.reconcile.generations import Generations

    generations = Generations(settings.paths().generations)
    current, numbers = generations.current_number(), generations.numbers()
    return current if current is not None and numbers and current < numbers[-1] else None
