"""The planner: manifest + one observed snapshot → a plan. Pure: no I/O and no clock (client
edits too: clients.plan_clients decides them from the files observe read), so every decision is
testable as a data case.
"""

from __future__ import annotations

from dataclasses import dataclass

from local_ai import sizing
from local_ai.clients.plan import is_enabled, plan_clients
from local_ai.manifest.models import Manifest, ModelSpec
from local_ai.manifest.serving import engine_settings, gateway_settings
from local_ai.manifest.source import DEFAULT_REVISION
from local_ai.reconcile import cluster
from local_ai.reconcile.model import (
    Action,
    ConvertParams,
    CopyParams,
    GateParams,
    HostPlan,
    InstallParams,
    Kind,
    Observed,
    Plan,
    ReleaseParams,
    ResourceChange,
    ServeParams,
    SourceView,
    alias_map_hash,
    convert_digest,
    install_fields,
    install_key,
    needs_conversion,
    served_digest,
)
from local_ai.store.lockfile import LockMatch, lock_matches
from local_ai.util.change import Change
from local_ai.util.units import human_bytes

_gb = sizing.format_gb


@dataclass(frozen=True)
class Options:
    prune: bool = False
    frozen: bool = False
    targets: tuple[str, ...] = ()
    converter_version: str = "0"
    benchmark: bool = True  # False with --skip-benchmark


def target_bits(spec: ModelSpec) -> float | None:
    """Bits per weight the spec converts to; None when served at the source's precision."""
    if spec.quantize is None or spec.quantize == "auto":
        return None
    return sizing.level_bits(spec.quantize, spec.group_size)


def source_weights(view: SourceView) -> int:
    """Bytes of the source's weight files (all its files when none is recognized)."""
    return (
        sizing.weight_bytes((f.name, f.size) for f in view.source.files) or view.source.total_size
    )


def source_bits(view: SourceView) -> float:
    """Bits per weight of the source as stored (16 when nothing says otherwise)."""
    return view.source_bits or sizing.DEFAULT_SOURCE_BITS


def estimated_weights(spec: ModelSpec, view: SourceView) -> int:
    """Bytes of weights once installed: the source as is, or rescaled to the target bits."""
    return sizing.weights_at(source_weights(view), source_bits(view), target_bits(spec))


def kv_bytes(spec: ModelSpec, view: SourceView) -> int:
    """KV cache at the spec's context; 0 when the source's shape is unknown (no config.json)."""
    if not (view.num_layers and view.num_kv_heads and view.head_dim):
        return 0
    shape = sizing.ArchShape(view.num_layers, view.num_kv_heads, view.head_dim)
    return shape.kv_bytes(spec.context)


def auto_level(spec: ModelSpec, view: SourceView, usable_memory: int) -> sizing.AutoLevel:
    """What `quantize = "auto"` resolves to for this source on a machine with
    ``usable_memory`` bytes: the one choice search and `models convert` make too."""
    return sizing.choose_level(
        source_weights(view),
        source_bits(view),
        kv_bytes(spec, view),
        usable_memory,
        context=spec.context,
        group_size=spec.group_size,
        source_is_mlx=view.source.format == "mlx",
        source_level=view.source_quantization,
    )


def footprint(spec: ModelSpec, view: SourceView) -> tuple[int, int]:
    """(weights, KV cache at the model's context) in bytes: every memory decision asks here."""
    return estimated_weights(spec, view), kv_bytes(spec, view)


def _short(commit: str | None) -> str:
    return commit[:7] if commit else "none"


def _pinned(view: SourceView) -> str:
    """What the lock holds a source to, in words a user can check: the commit of a repo, the
    files of a local path (it has no commit)."""
    if view.source.repo is not None:
        return _short(view.source.commit)
    count = len(view.source.files)
    return f"{count} file{'s' if count != 1 else ''}, {human_bytes(view.source.total_size)}"


def _disagreement(match: LockMatch) -> str:
    """The first way the lock no longer pins the manifest's source, in plan wording."""
    moved = next(d for d in match.differences if not d.of_recipe)
    if moved.field == "entry":
        return "not in local-ai.lock"
    locked, wanted = moved.locked, moved.wanted
    if moved.field == "revision":  # no revision means main
        locked, wanted = (None if v == DEFAULT_REVISION else v for v in (locked, wanted))
    if isinstance(locked, list) or isinstance(wanted, list):
        locked, wanted = (
            ", ".join(map(str, v)) if isinstance(v, list) else v for v in (locked, wanted)
        )
    what = "source" if moved.field == "kind" else moved.field
    return f"{what} {locked or 'unset'} → {wanted or 'unset'}"


def _spec_change(old: dict[str, object], new: dict[str, object]) -> str:
    parts = []
    for key, value in new.items():
        before = old.get(key)
        if before != value:
            parts.append(f"{key} {before or 'unset'} → {value or 'unset'}")
    return ", ".join(parts) or "build inputs changed"


class _Builder:
    def __init__(self, manifest: Manifest, observed: Observed, options: Options) -> None:
        self.manifest = manifest
        self.observed = observed
        self.options = options
        self.actions: list[Action] = []
        self.resources: list[ResourceChange] = []
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.model_footprint: dict[str, int] = {}  # single-Mac models
        self.placed: dict[str, SourceView] = {}  # models sharded across cluster hosts
        self.host_plans: list[HostPlan] = []
        self.cluster_label = ""
        self.convert_peak = 0
        seen = observed.clients
        # The edits of each client's files, decided from the files as observed.
        self.client_changes = plan_clients(manifest, None, seen) if seen is not None else []

    def add(self, action: Action) -> str:
        self.actions.append(action)
        return action.id

    # ------------------------------------------------------------------------------ models

    def source_for(self, alias: str, spec: ModelSpec) -> tuple[SourceView | None, str | None]:
        """(source, why a resolve is planned). Errors are recorded for unresolvable aliases."""
        locked = self.observed.lock.get(alias)
        match = lock_matches(spec, locked.entry if locked else None)
        if locked is not None and not match.source_moved:
            return locked, None
        disagreement = _disagreement(match)
        if self.options.frozen:
            self.errors.append(
                f"models.{alias}: manifest and local-ai.lock disagree ({disagreement}); "
                "run `local-ai lock` to update the lock, or apply without --frozen"
            )
            return None, None
        resolved = self.observed.resolved.get(alias)
        if resolved is None:
            why = self.observed.unresolved.get(alias, "not resolved")
            self.errors.append(f"models.{alias}: cannot resolve {spec.source_label}: {why}")
            return None, None
        return resolved, disagreement

    def plan_model(self, alias: str, spec: ModelSpec) -> list[str]:
        """Actions for one alias; returns the ids the server reload must wait for."""
        resource = f"model.{alias}"
        if spec.hosts and (why := cluster.unusable(spec, self.observed.hosts)):
            cause = f"not planned: {'; '.join(why)}"
            self.resources.append(ResourceChange(resource, Change.BLOCKED, cause))
            return []
        view, resolve_cause = self.source_for(alias, spec)
        if view is None:
            return []
        auto_reason = None
        if spec.quantize == "auto":
            chosen = auto_level(spec, view, self.observed.usable_memory)
            if not chosen.fits:
                self.errors.append(f"models.{alias}: {chosen.reason}")
                return []
            # From here on the model is planned as the level auto chose on this machine.
            spec = spec.model_copy(update={"quantize": chosen.level})
            auto_reason = chosen.reason
        if spec.hosts:
            self.placed[alias] = view
        else:
            self.model_footprint[alias] = sum(footprint(spec, view))
        installed = self.observed.installed.get(alias)
        key = install_key(spec)
        if installed is None:
            change, cause = Change.CREATE, "new model"
        elif installed.spec_key != key:
            change, cause = Change.REPLACE, _spec_change(installed.spec, install_fields(spec))
        elif installed.commit != view.source.commit:
            change = Change.REPLACE
            cause = f"revision moved {_short(installed.commit)} → {_short(view.source.commit)}"
        elif not installed.present:
            change, cause = Change.REPLACE, installed.drift or "store entry missing on disk"
        else:
            if resolve_cause is not None:  # up to date, but the lock must catch up
                self.add(self._resolve(alias, spec, view, resolve_cause))
                self.resources.append(ResourceChange(resource, Change.UPDATE, resolve_cause))
                return []
            quant = spec.quantize or view.source_quantization
            if quant is None:
                quant = (
                    "source precision"
                    if needs_conversion(spec, view.source)
                    else view.source.format
                )
            if auto_reason:
                quant = f"auto: {quant}"
            where = _short(view.source.commit) if view.source.repo is not None else spec.path
            self.resources.append(
                ResourceChange(resource, Change.NOOP, f"up to date ({where}, {quant})")
            )
            return []
        self.resources.append(ResourceChange(resource, change, cause))
        deps: list[str] = []
        if resolve_cause is not None:
            deps.append(self.add(self._resolve(alias, spec, view, resolve_cause)))
        if view.source.repo is not None:
            if alias not in self.observed.cached:
                deps.append(
                    self.add(
                        Action(
                            id=f"fetch:{alias}",
                            kind=Kind.FETCH,
                            resource=resource,
                            cause=cause,
                            depends_on=tuple(deps),
                            download_bytes=view.source.total_size,
                            disk_bytes=view.source.total_size,
                            detail=f"{len(view.source.files)} files from "
                            f"{view.source.repo}@{_short(view.source.commit)}",
                        )
                    )
                )
            deps.append(
                self.add(
                    Action(
                        id=f"verify:{alias}",
                        kind=Kind.VERIFY,
                        resource=resource,
                        cause="check sha256 against local-ai.lock",
                        depends_on=tuple(deps),
                        detail=f"{len(view.source.files)} files",
                    )
                )
            )
        if needs_conversion(spec, view.source):
            digest = convert_digest(view.source, spec, self.options.converter_version)
            if digest not in self.observed.store_digests:
                size = estimated_weights(spec, view)
                largest = max((f.size for f in view.source.files), default=0)
                peak = sizing.convert_peak_bytes(largest, size)
                self.convert_peak = max(self.convert_peak, peak)
                recipe = spec.quantize or "source precision"
                group = f" g{spec.group_size}" if spec.quantize in sizing.AFFINE_BITS else ""
                deps.append(
                    self.add(
                        Action(
                            id=f"convert:{alias}",
                            kind=Kind.CONVERT,
                            resource=resource,
                            cause=cause,
                            depends_on=tuple(deps),
                            disk_bytes=size,
                            peak_memory_bytes=peak,
                            detail=f"{view.source.format} → mlx {recipe}" + group,
                            params=ConvertParams(digest, spec.quantize),
                        )
                    )
                )
            self._warn_requantize(alias, spec, view)
        install = self.add(
            Action(
                id=f"install:{alias}",
                kind=Kind.INSTALL,
                resource=resource,
                cause=cause,
                depends_on=tuple(deps),
                detail=self._install_detail(spec, view)
                + (f" ({auto_reason})" if auto_reason else ""),
                params=InstallParams(spec.quantize, needs_conversion(spec, view.source)),
            )
        )
        return [install]

    def _resolve(self, alias: str, spec: ModelSpec, view: SourceView, cause: str) -> Action:
        return Action(
            id=f"resolve:{alias}",
            kind=Kind.RESOLVE,
            resource=f"model.{alias}",
            cause=cause,
            detail=f"{spec.source_label} → {_pinned(view)} in local-ai.lock",
        )

    def _install_detail(self, spec: ModelSpec, view: SourceView) -> str:
        if needs_conversion(spec, view.source):
            return "serve the converted model from the store"
        if view.source.repo is not None:
            return "serve the HF cache snapshot as is"
        return f"serve {spec.path}"

    def _warn_requantize(self, alias: str, spec: ModelSpec, view: SourceView) -> None:
        if view.source.format != "gguf" or not view.source_bits or view.source_bits >= 8:
            return
        bits = target_bits(spec)
        if spec.quantize is None or (bits is not None and bits >= 16):
            return
        hint = (
            f"; the original weights are in {view.source.base_model}"
            if view.source.base_model
            else ""
        )
        self.warnings.append(
            f"models.{alias}: {view.source.file} is already "
            f"{view.source_quantization or 'low-bit'}; "
            f"requantizing it to {spec.quantize} compounds the error{hint}"
        )

    def plan_removals(self) -> None:
        for alias in sorted(set(self.observed.installed) - set(self.manifest.models)):
            resource = f"model.{alias}"
            if self.options.targets and alias not in self.options.targets:
                continue
            if self.options.prune:
                self.resources.append(ResourceChange(resource, Change.DELETE, "not in manifest"))
                self.add(
                    Action(
                        id=f"remove:{alias}",
                        kind=Kind.REMOVE,
                        resource=resource,
                        cause="not in manifest",
                        detail="forget the alias; `local-ai gc` frees its files",
                    )
                )
            else:
                self.resources.append(
                    ResourceChange(
                        resource, Change.NOOP, "not in manifest; `apply --prune` removes it"
                    )
                )

    # ------------------------------------------------------------------------------ server

    def plan_server(self, installs: list[str], admit: tuple[str, ...], remeasure: bool) -> None:
        """`admit`: the aliases whose gate-rejected builds are served; `remeasure`: some of them
        are put back in service to be measured again."""
        server = self.observed.server
        serve = ServeParams(admit)
        manifest = self.manifest
        # The server runs with whatever did install: a failed model must not keep the others
        # offline, so installs only order these actions.
        after = tuple(installs)
        views = {**self.observed.resolved, **self.observed.lock}
        commits = {
            alias: views[alias].source.commit if alias in views else None
            for alias in manifest.models
        }
        want_aliases = alias_map_hash(manifest, commits)
        if not server.running:
            if manifest.server.autostart:
                self.resources.append(ResourceChange("server", Change.CREATE, "server not running"))
                self.add(
                    Action(
                        id="start-server",
                        kind=Kind.START_SERVER,
                        resource="server",
                        cause="server not running",
                        after=after,
                        detail=f"http://{manifest.server.host}:{manifest.server.port}",
                        params=serve,
                    )
                )
            else:
                self.resources.append(
                    ResourceChange(
                        "server", Change.NOOP, "server stopped (server.autostart = false)"
                    )
                )
            return
        gateway = gateway_settings(manifest)
        if server.gateway != gateway:
            cause = _settings_change("server", server.gateway, gateway)
            self.resources.append(ResourceChange("server", Change.REPLACE, cause))
            self.add(
                Action(
                    id="restart-server",
                    kind=Kind.RESTART_SERVER,
                    resource="server",
                    cause=cause,
                    after=after,
                    params=serve,
                )
            )
            return
        engine = engine_settings(manifest)
        causes: list[str] = []
        if server.engine != engine:
            cause = _settings_change("server.engine", server.engine, engine)
            causes.append(cause)
            self.add(
                Action(
                    id="restart-engine",
                    kind=Kind.RESTART_ENGINE,
                    resource="server",
                    cause=cause,
                    after=after,
                )
            )
        if server.aliases_hash != want_aliases or installs or remeasure:
            cause = _alias_change(server.aliases, tuple(manifest.models))
            if server.rolled_back_to is not None:
                cause += f" (serving generation {server.rolled_back_to} since a rollback)"
            causes.append(cause)
            self.add(
                Action(
                    id="reload-aliases",
                    kind=Kind.RELOAD_ALIASES,
                    resource="server",
                    cause=cause,
                    after=after + (("restart-engine",) if server.engine != engine else ()),
                    params=serve,
                )
            )
        if causes:
            self.resources.append(ResourceChange("server", Change.UPDATE, "; ".join(causes)))
        else:
            self.resources.append(
                ResourceChange("server", Change.NOOP, "running with this configuration")
            )

    def plan_clients(self) -> None:
        server_ids = tuple(
            a.id
            for a in self.actions
            if a.kind in (Kind.START_SERVER, Kind.RESTART_SERVER, Kind.RELOAD_ALIASES)
        )
        if self.observed.clients_error is not None:
            self.errors.append(f"clients: {self.observed.clients_error}")
        for client in self.client_changes:
            if client.error is not None:
                self.errors.append(f"{client.resource}: {client.error}")
                continue
            if not client.has_changes:
                self.resources.append(ResourceChange(client.resource, Change.NOOP, client.cause))
                continue
            change = Change.DELETE if client.change is Change.DELETE else Change.UPDATE
            self.resources.append(ResourceChange(client.resource, change, client.cause))
            self.add(
                Action(
                    id=f"write-client:{client.client}",
                    kind=Kind.WRITE_CLIENT,
                    resource=client.resource,
                    cause=client.cause,
                    # Point editors at the server once it serves the new aliases.
                    after=server_ids,
                    params=client,
                )
            )

    def rejected(self) -> dict[str, str]:
        """Aliases of this plan whose installed build the gate kept out of service, and why."""
        targets = self.options.targets
        return {
            alias: view.rejected
            for alias, view in self.observed.installed.items()
            if view.rejected and alias in self.manifest.models and (not targets or alias in targets)
        }

    @property
    def measuring(self) -> bool:
        return self.manifest.benchmark.on_apply and self.options.benchmark

    def plan_measurements(self, rebuilt: dict[str, str], remeasure: dict[str, str]) -> None:
        """Benchmark, then each configured client's requests, for every new or rebuilt model and
        every rejected build measured again; with benchmark.gate a failure of either keeps the
        previous generation serving (one gate: run.py `_gate_closed`)."""
        if not self.measuring:
            return
        server_ready = tuple(
            a.id
            for a in self.actions
            if a.kind in (Kind.START_SERVER, Kind.RESTART_SERVER, Kind.RELOAD_ALIASES)
        )
        wanted: dict[str, tuple[str, tuple[str, ...]]] = {
            alias: ("new or rebuilt model", (install_id,)) for alias, install_id in rebuilt.items()
        }
        for alias, why in remeasure.items():
            wanted[alias] = (f"kept out of service by benchmark.gate ({why})", ())
        bench = self.manifest.benchmark
        clients = tuple(  # a disabled client is left alone, so it is not probed either
            c.client
            for c in self.client_changes
            if is_enabled(self.manifest, c.client) and c.error is None
        )
        for alias, (cause, installed_by) in wanted.items():
            floor = self.manifest.models[alias].min_tokens_per_second or bench.min_tokens_per_second
            measured = self.add(
                Action(
                    id=f"benchmark:{alias}",
                    kind=Kind.BENCHMARK,
                    resource=f"model.{alias}",
                    cause=cause,
                    depends_on=(*installed_by, *server_ready),
                    detail=f"{bench.prompt_tokens} prompt / {bench.gen_tokens} generated tokens",
                    params=GateParams(bench.gate, floor=floor),
                )
            )
            if clients:
                self.add(
                    Action(
                        id=f"conform:{alias}",
                        kind=Kind.CONFORM,
                        resource=f"model.{alias}",
                        cause=cause,
                        depends_on=(*installed_by, *server_ready, measured),
                        detail=f"requests and a tool-call round trip of {', '.join(clients)}",
                        params=GateParams(bench.gate, clients=clients),
                    )
                )

    # ------------------------------------------------------------------------------ cluster

    def plan_cluster(self, installs: dict[str, str]) -> int:
        """Shares, fit and copies of the models sharded across hosts; returns rank 0's peak."""
        settings = self.manifest.cluster
        blocked = any(r.change is Change.BLOCKED for r in self.resources)
        if settings is None or not (self.placed or blocked):
            return 0  # no sharded model in this plan: the hosts were not observed
        self.cluster_label = f"{settings.backend} backend, rank 0 = {settings.rank0}"
        hosts = self.observed.hosts
        all_shares = []
        host_of: dict[tuple[str, int], str] = {}
        copies: dict[str, int] = {}
        used: list[str] = []
        for alias, view in self.placed.items():
            spec = self.manifest.models[alias]
            names = spec.hosts or []
            weights, kv = footprint(spec, view)
            got, problem = cluster.shares(alias, spec, view, weights, kv)
            if problem is not None:
                self.errors.append(problem)
                continue
            host_of.update({(alias, s.rank): names[s.rank] for s in got})
            all_shares += got
            used += [n for n in names if n not in used]
            digest = served_digest(view.source, spec, self.options.converter_version)
            lacking = [n for n in names[1:] if digest not in hosts[n].digests]
            for name in lacking:
                copies[name] = copies.get(name, 0) + weights
                self.add(
                    Action(
                        id=f"copy-to-host:{alias}@{name}",
                        kind=Kind.COPY_TO_HOST,
                        resource=f"model.{alias}",
                        cause=f"{name} lacks store entry {digest}",
                        depends_on=(installs[alias],) if alias in installs else (),
                        detail=f"to {name} ({settings.hosts[name].ssh})",
                        params=CopyParams(name, digest, weights),
                    )
                )
            self._mark_copies(alias, lacking)
        self.errors += cluster.version_problems(settings, used, hosts)
        plans, errors = cluster.host_plans(
            settings, hosts, all_shares, host_of, copies, sum(self.largest_loaded())
        )
        self.errors += errors
        self.host_plans = plans
        return next((p.peak for p in plans if p.name == settings.rank0), 0)

    def plan_releases(self, serving: tuple[str, ...]) -> None:
        """Release the holds rank 0 keeps on hosts for what it no longer places there: a model
        gone from the manifest or from that host, or a host now given another store entry.
        `serving`: the server actions that stop serving it; a release waits for their success."""
        settings = self.manifest.cluster
        if self.options.targets:
            return  # --target: the other models' placements were not planned
        if settings is None:  # [cluster] removed: no rank 0 name or hosts to observe with
            for name, host in self.observed.removed_hosts.items():
                self.warnings.append(
                    f"[cluster] was removed, but the generation in service runs ranks on {name}: "
                    "the store entries this Mac keeps held there stay held, and it forgets the "
                    f"host once it serves without it; run `local-ai gc --release-holds` on {name} "
                    f"(ssh {host.ssh})"
                )
            return
        named = {n for spec in self.manifest.models.values() for n in spec.hosts or ()}
        for name, report in self.observed.hosts.items():
            if name == settings.rank0:
                continue
            removed = self.observed.removed_hosts.get(name)
            if removed is not None and (not report.reachable or report.store is None):
                self.warnings.append(
                    f"cluster.hosts.{name} was removed, and rank 0 cannot read its holds there "
                    f"({report.error}): the store entries it keeps for rank 0 {settings.rank0} "
                    "stay held, and rank 0 forgets the host once it serves without it; run "
                    f"`local-ai gc --release-holds` on {name} (ssh {removed.ssh})"
                )
                continue
            if not report.reachable:
                if name not in named:
                    self.warnings.append(
                        f"cluster.hosts.{name} is unreachable ({report.error}): the store entries "
                        f"it keeps for rank 0 {settings.rank0} stay held there until an apply "
                        "reaches it (or `local-ai gc --release-holds` is run there)"
                    )
                continue
            for entry, rank0, alias in report.holds:
                cause = self._release_cause(name, entry, alias) if rank0 == settings.rank0 else None
                if cause is None:
                    continue
                resource = f"hold.{alias}@{name}"
                if not any(r.resource == resource for r in self.resources):
                    self.resources.append(ResourceChange(resource, Change.DELETE, cause))
                self.add(
                    Action(
                        id=f"release-hold:{alias}@{name}:{entry.partition('-')[0]}",
                        kind=Kind.RELEASE_HOLD,
                        resource=resource,
                        cause=cause,
                        depends_on=serving,
                        detail=f"on {name}: store entry {entry}",
                        params=ReleaseParams(name, entry, rank0, alias),
                    )
                )

    def _release_cause(self, host: str, entry: str, alias: str) -> str | None:
        """Why rank 0 no longer needs `entry` on `host` for `alias`, or None to keep it."""
        spec = self.manifest.models.get(alias)
        if spec is not None and spec.hosts and cluster.unusable(spec, self.observed.hosts):
            return None  # not planned now: the group serving it keeps running where it ran
        if host in self.observed.removed_hosts:
            return f"{host} is no longer in [cluster.hosts]"
        if spec is None:
            return f"{alias} is no longer in the manifest"
        if host not in (spec.hosts or [])[1:]:
            return f"{alias} is no longer placed on {host}"
        view = self.placed.get(alias)
        if view is None:
            return None  # not planned now (a host unreachable, an error): keep what serves it
        digest = served_digest(view.source, spec, self.options.converter_version)
        if entry.partition("-")[0] == digest:
            return None
        return f"{alias} on {host} is now store entry {digest}"

    def _mark_copies(self, alias: str, lacking: list[str]) -> None:
        """An up-to-date model whose files some host lacks is a change, not a no-op."""
        resource = f"model.{alias}"
        for i, res in enumerate(self.resources):
            if res.resource == resource and res.change is Change.NOOP and lacking:
                cause = f"{', '.join(lacking)} lack{'s' if len(lacking) == 1 else ''} its files"
                self.resources[i] = ResourceChange(resource, Change.UPDATE, cause)

    # ------------------------------------------------------------------------------ memory

    def largest_loaded(self) -> list[int]:
        """Footprints of the single-Mac models the engine may hold at once."""
        sizes = sorted(self.model_footprint.values(), reverse=True)
        return sizes[: self.manifest.server.engine.max_loaded_models]

    def check_memory(self) -> int:
        usable = self.observed.usable_memory
        sizes = self.model_footprint
        if not sizes or usable <= 0:
            return 0
        for alias, size in sizes.items():
            if size > usable:
                self.errors.append(
                    f"models.{alias}: needs about {_gb(size)} (weights + KV cache at "
                    f"{self.manifest.models[alias].context} tokens) but {self.observed.machine} "
                    f"has {_gb(usable)} usable; use a lower quantize level or a smaller context"
                )
        preload = [a for a in self.manifest.server.preload if a in sizes]
        preload_total = sum(sizes[a] for a in preload)
        if len(preload) > 1 and preload_total > usable:
            self.errors.append(
                f"server.preload: {', '.join(preload)} need {_gb(preload_total)} together but "
                f"{_gb(usable)} is usable; preload fewer models"
            )
        largest = self.largest_loaded()
        resident = sum(largest)
        if resident > usable and len(largest) > 1:
            self.warnings.append(
                f"the {len(largest)} largest models need {_gb(resident)} together, more than "
                f"{_gb(usable)} usable; the engine will unload one before loading another "
                "(lower server.engine.max_loaded_models to make that explicit)"
            )
        return max(resident if resident <= usable else max(sizes.values()), self.convert_peak)


def _settings_change(prefix: str, old: dict[str, object], new: dict[str, object]) -> str:
    parts = []
    for key in new:
        if old.get(key) != new[key]:
            name = "api key" if key == "api_key" else f"{prefix}.{key}" if prefix else key
            if key == "api_key":
                parts.append("api key changed")
            else:
                parts.append(f"{name} {_show(old.get(key))} → {_show(new[key])}")
    return ", ".join(parts) or f"{prefix} settings changed"


def _show(value: object) -> str:
    return "unset" if value is None else str(value)


def _alias_change(served: tuple[str, ...], wanted: tuple[str, ...]) -> str:
    added = [a for a in wanted if a not in served]
    removed = [a for a in served if a not in wanted]
    parts = [f"+{a}" for a in added] + [f"-{a}" for a in removed]
    return "aliases changed: " + (
        ", ".join(parts) if parts else "models rebuilt or settings changed"
    )


def plan(manifest: Manifest, observed: Observed, options: Options | None = None) -> Plan:
    options = options or Options()
    builder = _Builder(manifest, observed, options)
    unknown = [
        t for t in options.targets if t not in manifest.models and t not in observed.installed
    ]
    for target in unknown:
        builder.errors.append(f"--target {target}: no such alias in the manifest")
    installs: list[str] = []
    rebuilt: dict[str, str] = {}
    for alias, spec in manifest.models.items():
        if options.targets and alias not in options.targets:
            continue
        ids = builder.plan_model(alias, spec)
        installs += ids
        if ids:
            rebuilt[alias] = ids[0]
    builder.plan_removals()
    rank0_peak = builder.plan_cluster(rebuilt)
    removal_ids = [a.id for a in builder.actions if a.kind is Kind.REMOVE]
    # A sharded alias enters the served map once its store entry is on every host.
    copy_ids = [a.id for a in builder.actions if a.kind is Kind.COPY_TO_HOST]
    rejected = {a: why for a, why in builder.rejected().items() if a not in rebuilt}
    gate = manifest.benchmark.gate
    remeasure = rejected if gate and builder.measuring else {}
    # Without the gate a rejection no longer holds; with it, only a build measured again serves.
    admit = tuple(rejected if not gate else remeasure)
    builder.plan_server(installs + removal_ids + copy_ids, admit, bool(remeasure))
    # A host's hold goes only once the gateway no longer serves that entry from it.
    serving = (Kind.START_SERVER, Kind.RESTART_SERVER, Kind.RELOAD_ALIASES, Kind.RESTART_ENGINE)
    builder.plan_releases(tuple(a.id for a in builder.actions if a.kind in serving))
    builder.plan_measurements(rebuilt, remeasure)
    if not options.targets:
        builder.plan_clients()
    peak = max(builder.check_memory(), rank0_peak)
    if builder.errors:
        actions: tuple[Action, ...] = ()
    else:
        actions = tuple(builder.actions)
    return Plan(
        manifest_hash=manifest.fingerprint(),
        observed_fingerprint=observed.fingerprint(),
        actions=actions,
        resources=tuple(builder.resources),
        errors=tuple(builder.errors),
        warnings=tuple(builder.warnings),
        usable_memory=observed.usable_memory,
        peak_memory=peak,
        hosts=tuple(builder.host_plans),
        cluster=builder.cluster_label,
    )
