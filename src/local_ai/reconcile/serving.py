"""The alias map the gateway serves, decided here only: apply builds it from what it installed
and records it as a generation; `server start`/`restart`, launchd starts and `rollback` put a
recorded generation back in service (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import TYPE_CHECKING, Any

from local_ai import settings
from local_ai.cluster.copy import entry_name
from local_ai.cluster.launch import (
    hostfile_path,
    rank_pythons,
    rank_ssh,
    recorded_host,
    write_hostfile,
)
from local_ai.errors import LocalAIError
from local_ai.hub.resolve import resolve_path
from local_ai.manifest.load import LoadedManifest
from local_ai.manifest.models import ClusterHost, ClusterSettings, Manifest, ModelSpec
from local_ai.reconcile.generations import Generations
from local_ai.reconcile.model import alias_map_hash
from local_ai.server.aliases import AliasEntry, AliasMap, GroupEntry
from local_ai.store.state import InstalledModel, State, load_state

if TYPE_CHECKING:
    from local_ai.cluster.observe import HostReport

RUN_APPLY = "run `local-ai apply`"
NOT_APPLIED = f"not installed yet; {RUN_APPLY}"
SHARDED = f"sharded across [cluster] hosts, not on every host yet; {RUN_APPLY}"


def alias_map_of(
    manifest: Manifest,
    state: State,
    commits: dict[str, str | None] | None,
    *,
    admit: tuple[str, ...] = (),
    in_service: AliasMap | None = None,
    groups: Mapping[str, GroupEntry] | None = None,
) -> AliasMap:
    """Each manifest alias served from the build state.json records for it. `commits` (alias →
    source commit) names the map with `alias_map_hash`; None: a map apply did not make.
    A build the gate rejected is served only when `admit` names its alias (the plan measures it
    again, or the gate is off); otherwise the alias keeps what `in_service` serves, if anything.
    A sharded alias is served only by its group in `groups` (its store entry on every host)."""
    groups = groups or {}
    entries: dict[str, AliasEntry] = {}
    held_back = False
    for alias, spec in manifest.models.items():
        model = state.models.get(alias)
        if model is None or (spec.hosts and alias not in groups):
            continue  # a sharded model is never served from one Mac
        if model.rejected is not None and alias not in admit:
            held_back = True
            kept = in_service.models.get(alias) if in_service is not None else None
            if kept is not None:
                entries[alias] = kept
            continue
        entries[alias] = AliasEntry(
            path=model.location,
            context=spec.context,
            max_output_tokens=spec.max_output_tokens,
            name=spec.name,
            source=model.source,
            format="mlx",
            quantization=model.quantization,
            digest=model.store_digest,
            group=groups.get(alias),
        )
    # Only a map serving every alias as built (and every group placed as declared: one kept
    # while a host is down may predate an edit) is the one the manifest asks for.
    complete = (
        commits is not None
        and set(entries) == set(manifest.models)
        and not held_back
        and all(_placed_as_declared(manifest, a, e.group) for a, e in entries.items())
    )
    hash_ = alias_map_hash(manifest, commits or {}) if complete else None
    return _assemble(manifest, entries, hash_)


def group_of(
    alias: str,
    spec: ModelSpec,
    cluster: ClusterSettings,
    model: InstalledModel,
    digest: str,
    hosts: Mapping[str, HostReport],
    copied: Set[str] = frozenset(),
) -> GroupEntry | None:
    """The group serving sharded `alias` (installed here as `model`, store entry `digest` on
    the other hosts), or None while a host lacks it (neither observed there nor `copied` now)."""
    paths = [model.location]
    for name in (spec.hosts or [])[1:]:
        report = hosts.get(name)
        held = report is not None and (digest in report.digests or name in copied)
        if report is None or report.store is None or not held:
            return None
        paths.append(f"{report.store.rstrip('/')}/{digest}-{entry_name(model)}")
    return GroupEntry(model_paths=paths, **_placement(alias, spec, cluster))


def removed_hosts(
    cluster: ClusterSettings | None, served: Mapping[str, AliasEntry]
) -> dict[str, ClusterHost]:
    """Hosts the `served` groups run ranks on that [cluster.hosts] (or no [cluster]) no longer
    names, reached as the generation recorded them: rank 0 still holds store entries there."""
    kept = cluster.hosts if cluster is not None else {}
    found: dict[str, ClusterHost] = {}
    for entry in served.values():
        group = entry.group
        if group is None:
            continue
        for rank, name in enumerate(group.hosts):
            ssh = group.ssh[rank]  # None: rank 0, this machine
            if ssh is None or name in kept or name in found:
                continue
            host = recorded_host(ssh, group.pythons[rank], group.model_paths[rank])
            if not any(_same_home(host, other) for other in kept.values()):
                found[name] = host
    return found


def _same_home(recorded: ClusterHost, kept: ClusterHost) -> bool:
    """Whether `kept` may be the local-ai home `recorded` was (a host renamed in the manifest):
    its holds are then that host's to keep. A default or ~ home may be the recorded one."""
    if kept.ssh != recorded.ssh:
        return False
    return kept.home is None or kept.home.startswith("~") or kept.home == recorded.home


def _placement(alias: str, spec: ModelSpec, cluster: ClusterSettings) -> dict[str, Any]:
    """What the manifest decides of `alias`'s group: all but where each host keeps the entry."""
    names = list(spec.hosts or [])
    return {
        "parallel": str(spec.parallel),
        "backend": cluster.backend,
        "hosts": names,
        "pythons": rank_pythons(cluster, names),
        "addresses": [cluster.hosts[n].address or "" for n in names],
        "ssh": rank_ssh(cluster, names),
        "hostfile": str(hostfile_path(alias)),
    }


def _placed_as_declared(manifest: Manifest, alias: str, group: GroupEntry | None) -> bool:
    if group is None or manifest.cluster is None:
        return group is None
    declared = _placement(alias, manifest.models[alias], manifest.cluster)
    return group.model_dump(exclude={"model_paths"}) == declared


def write_hostfiles(manifest: Manifest, alias_map: AliasMap) -> None:
    """mlx.launch's hostfile of every group in `alias_map`, before the gateway starts them."""
    cluster = manifest.cluster
    for alias, entry in alias_map.models.items():
        if entry.group is None or cluster is None:
            continue
        if any(name not in cluster.hosts for name in entry.group.hosts):
            continue  # a kept group on a host since removed: the hostfile it started with stays
        write_hostfile(cluster, alias, entry.group.hosts)


def _assemble(manifest: Manifest, entries: dict[str, AliasEntry], hash_: str | None) -> AliasMap:
    entries = {a: entries[a] for a in manifest.models if a in entries}  # manifest order
    default = manifest.default_alias
    return AliasMap(
        default=default if default in entries else next(iter(entries), None),
        models=entries,
        hash=hash_,
        preload=[a for a in manifest.server.preload if a in entries],
    )


def map_to_serve(loaded: LoadedManifest) -> tuple[AliasMap, dict[str, str]]:
    """What a starting server serves: the generation in service (the last apply's, or the one
    `rollback` chose). Returns the map and, per manifest alias left out, why."""
    manifest = loaded.manifest
    current = Generations(settings.paths().generations).current()
    if current is None:
        return _before_first_apply(loaded)
    alias_map = current.alias_map()
    skipped = {
        a: SHARDED if spec.hosts else NOT_APPLIED
        for a, spec in manifest.models.items()
        if a not in alias_map.models
    }
    return alias_map, skipped


def _before_first_apply(loaded: LoadedManifest) -> tuple[AliasMap, dict[str, str]]:
    """No generation yet: what is installed, and `path` directories that need no conversion as
    they are, so a model directory can be tried before any apply."""
    manifest = loaded.manifest
    installed = alias_map_of(manifest, load_state(settings.paths().state_file), None)
    entries = dict(installed.models)
    skipped: dict[str, str] = {}
    for alias, spec in manifest.models.items():
        if alias in entries:
            continue
        if spec.hosts:
            skipped[alias] = SHARDED
            continue
        if spec.path is None:
            skipped[alias] = NOT_APPLIED
            continue
        if spec.quantize is not None:
            skipped[alias] = f"quantize = {spec.quantize!r} needs a conversion; {RUN_APPLY}"
            continue
        try:
            source = resolve_path(alias, spec, base_dir=loaded.path.parent)
        except LocalAIError as exc:
            skipped[alias] = str(exc)
            continue
        if source.format == "gguf":
            skipped[alias] = f"a .gguf file needs a conversion; {RUN_APPLY}"
            continue
        entries[alias] = AliasEntry(
            path=source.path or "",
            context=spec.context,
            max_output_tokens=spec.max_output_tokens,
            name=spec.name,
            source=spec.path,
            quantization=source.quantization.label if source.quantization else None,
        )
    return _assemble(manifest, entries, None), skipped
