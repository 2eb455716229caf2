"""One snapshot of what is: state.json, the store, local-ai.lock, the HF cache, the running
server and this machine. All of `plan`'s I/O happens here; the planner then decides without any.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_ai import settings, sizing
from local_ai.clients import plan as clients
from local_ai.clients.plan import ClientsObserved
from local_ai.cluster.observe import observe_hosts
from local_ai.discovery import names
from local_ai.errors import LocalAIError
from local_ai.hardware import detect
from local_ai.hub.fetch import is_cached
from local_ai.hub.resolve import repo_cache_dir, resolve
from local_ai.manifest.load import LoadedManifest
from local_ai.manifest.models import ModelSpec
from local_ai.manifest.source import ResolvedSource
from local_ai.reconcile.generations import Generations
from local_ai.reconcile.model import (
    InstalledView,
    Observed,
    ServerView,
    SourceView,
    install_fields,
)
from local_ai.reconcile.serving import removed_hosts
from local_ai.server.daemon import admin_request, running_server
from local_ai.store.layout import Store
from local_ai.store.lockfile import (
    LockEntry,
    LockFile,
    load_lock,
    lock_matches,
    lock_path_for,
    resolved_from_entry,
)
from local_ai.store.state import InstalledModel, State, load_state


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

    locked: dict[str, SourceView] = {}
    resolved: dict[str, SourceView] = {}
    unresolved: dict[str, str] = {}
    sources: dict[str, ResolvedSource] = {}
    fresh: dict[str, ResolvedSource] = {}
    for alias, spec in manifest.models.items():
        if targets and alias not in targets:
            continue
        entry = lock.models.get(alias)
        if entry is not None:
            pinned = resolved_from_entry(alias, entry, base_dir=base_dir)
            locked[alias] = _view_of(pinned, entry)
            if not lock_matches(spec, entry).source_moved:
                sources[alias] = pinned  # a new recipe rebuilds from the same source
                continue
        if frozen:
            continue  # the planner reports the disagreement
        try:
            source = _resolve(alias, spec, offline=offline, base_dir=base_dir)
        except LocalAIError as exc:
            unresolved[alias] = str(exc) + (f" ({exc.hint})" if exc.hint else "")
            continue
        sources[alias] = fresh[alias] = source
        resolved[alias] = _view_of(source)

    cached = frozenset(alias for alias, source in sources.items() if _complete_in_cache(source))
    store = Store(paths)
    digests = frozenset(entry.digest for entry in store.entries())
    installed = {alias: _installed_view(model) for alias, model in state.models.items()}

    hardware = detect()
    seen_clients, clients_error = observe_clients(loaded) if not targets else (None, None)
    hosts = {}
    removed = {}
    placed = [a for a, s in manifest.models.items() if s.hosts and (not targets or a in targets)]
    # Without --target, also to find the holds of models no longer placed on a host.
    if not targets and (served := Generations(paths.generations).current()) is not None:
        removed = removed_hosts(manifest.cluster, served.aliases)
    if manifest.cluster is not None and (placed or not targets):
        hosts = observe_hosts(manifest.cluster, removed)
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
        clients=seen_clients,
        clients_error=clients_error,
        hosts=hosts,
        removed_hosts=removed,
    )
    return Snapshot(loaded, observed, lock, lock_path, state, sources, fresh)


def observe_clients(loaded: LoadedManifest) -> tuple[ClientsObserved | None, str | None]:
    """The client config files and ownership records as read, or why they cannot be read."""
    try:
        return clients.observe_clients(loaded.manifest, base_dir=loaded.path.parent), None
    except LocalAIError as exc:
        return None, str(exc) + (f" ({exc.hint})" if exc.hint else "")


def _resolve(alias: str, spec: ModelSpec, *, offline: bool, base_dir: Path) -> ResolvedSource:
    return resolve(alias, spec, offline=offline, base_dir=base_dir)


# ---- sources as the planner sees them -------------------------------------------------------


def _view_of(source: ResolvedSource, entry: LockEntry | None = None) -> SourceView:
    config = _config_of(source)
    shape = sizing.shape_from_config(config)
    label, bits = _source_precision(source, config)
    return SourceView(
        source=source,
        entry=entry,
        source_quantization=label,
        source_bits=bits,
        num_layers=shape.num_layers if shape else None,
        num_kv_heads=shape.num_kv_heads if shape else None,
        head_dim=shape.head_dim if shape else None,
        model_type=config["model_type"] if isinstance(config.get("model_type"), str) else None,
    )


def _source_precision(
    source: ResolvedSource, config: dict[str, Any]
) -> tuple[str | None, float | None]:
    """The source's quantization label (None for 16-bit floats) and bits per weight as stored:
    an MLX quantization, the GGUF type its name announces, else config.json (fp8 and mxfp4
    originals are not 16-bit)."""
    quant = source.quantization
    bits = sizing.mlx_quant_bits(quant.bits, quant.group_size, quant.mode) if quant else None
    if quant is not None and bits is not None:
        return quant.label, bits
    if source.format == "gguf":
        # A repo's file path may name the type in a folder; a local path only in its file name.
        gguf = names.gguf_quant(source.file or Path(source.path or "").name)
        return (gguf.label, gguf.bits) if gguf is not None else (None, None)
    found = names.config_quant(config)
    if found is None:
        return None, sizing.DEFAULT_SOURCE_BITS
    return (found.label if found.bits < 16 else None), found.bits


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
    return repo_cache_dir(source.repo) / "snapshots" / source.commit


def _complete_in_cache(source: ResolvedSource) -> bool:
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
        rolled_back_to=Generations(settings.paths().generations).rolled_back_to(),
    )
