"""The actions' hands: one handler per action kind, each doing exactly what its action says.

Handlers make no decisions (the planner did); each records its result as soon as it completes
(state.json, local-ai.lock, the alias map), so an interrupted apply converges on the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from local_ai import settings
from local_ai.bench.measure import run_level, stream_once
from local_ai.bench.results import context_of
from local_ai.clients.base import ClientChange
from local_ai.clients.plan import apply_client_change, describe_result
from local_ai.cluster.copy import copy_entry, local_entry, release_on_host
from local_ai.convert.api import CONVERTER_VERSION, convert_to_store, weights_at
from local_ai.convert.recipe import AFFINE_BITS, MIXED_RECIPES, make_recipe
from local_ai.convert.safetensors_header import check_safetensors
from local_ai.errors import LocalAIError, ServerError, UnavailableError
from local_ai.hub.fetch import fetch
from local_ai.manifest.api_key import resolve_api_key
from local_ai.manifest.models import ModelSpec
from local_ai.manifest.serving import engine_settings
from local_ai.reconcile.cluster import unusable
from local_ai.reconcile.generations import Generations
from local_ai.reconcile.model import (
    Action,
    ConvertParams,
    CopyParams,
    GateParams,
    InstallParams,
    Kind,
    ReleaseParams,
    ServeParams,
    convert_digest,
    install_fields,
    install_key,
    served_digest,
)
from local_ai.reconcile.observe import Snapshot
from local_ai.reconcile.serving import alias_map_of, group_of, write_hostfiles
from local_ai.server import daemon
from local_ai.server.aliases import AliasMap, GroupEntry, put_in_service
from local_ai.server.daemon import running_server
from local_ai.store.layout import PROVENANCE_FILE, Store, safe_name
from local_ai.store.lockfile import (
    LockEntry,
    LockFile,
    entry_from_resolved,
    save_lock,
)
from local_ai.store.state import FileRecord, InstalledModel, save_state
from local_ai.util.failpoints import failpoint

if TYPE_CHECKING:
    from local_ai.convert.api import ConversionResult
    from local_ai.convert.recipe import Recipe
    from local_ai.hub.fetch import FetchResult
    from local_ai.hub.progress import FetchProgress
    from local_ai.manifest.source import ResolvedSource
    from local_ai.server.aliases import AliasMap

Handler = Callable[[Action], str | None]
ENGINE_READY_TIMEOUT = 120.0


def _alias(action: Action) -> str:
    return action.resource.split(".", 1)[1]


_P = TypeVar(
    "_P",
    ConvertParams,
    InstallParams,
    CopyParams,
    ReleaseParams,
    ServeParams,
    GateParams,
    ClientChange,
)


def _params(action: Action, kind: type[_P]) -> _P:
    if not isinstance(action.params, kind):
        raise LocalAIError(f"{action.id}: the plan gave no {kind.__name__}")
    return action.params


def recipe_for(spec: ModelSpec) -> Recipe:
    """The conversion recipe of a spec; no `quantize` on a non-MLX source keeps 16-bit floats."""
    level = spec.quantize or "fp16"
    grouped = level in AFFINE_BITS or level in MIXED_RECIPES
    return make_recipe(level, spec.group_size if grouped else None)


class Adapters:
    """Handlers bound to one observed snapshot."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        offline: bool = False,
        frozen: bool = False,
        fetch_progress: Callable[[], FetchProgress] | None = None,
        convert_progress: Callable[[], Any] | None = None,
    ) -> None:
        self.snap = snapshot
        self.manifest = snapshot.loaded.manifest
        self.offline = offline
        self.frozen = frozen
        self.state = snapshot.state
        self.lock_models: dict[str, LockEntry] = dict(snapshot.lock.models)
        self.fetched: dict[str, FetchResult] = {}
        self.converted: dict[str, ConversionResult] = {}
        self.fetch_progress = fetch_progress
        # A context manager factory yielding an event handler (or None) for conversions.
        self.convert_progress = convert_progress
        self.alias_map_written: AliasMap | None = None
        self.auto_levels: dict[str, str | None] = {}  # alias -> level auto chose in the plan
        self.copied: dict[str, set[str]] = {}  # alias -> hosts its store entry reached now

    def handlers(self) -> dict[Kind, Handler]:
        return {
            Kind.RESOLVE: self.resolve,
            Kind.FETCH: self.fetch,
            Kind.VERIFY: self.verify,
            Kind.CONVERT: self.convert,
            Kind.INSTALL: self.install,
            Kind.REMOVE: self.remove,
            Kind.START_SERVER: self.start_server,
            Kind.RESTART_SERVER: self.restart_server,
            Kind.RESTART_ENGINE: self.restart_engine,
            Kind.RELOAD_ALIASES: self.reload_aliases,
            Kind.BENCHMARK: self.benchmark,
            Kind.CONFORM: self.conform,
            Kind.WRITE_CLIENT: self.write_client,
            Kind.COPY_TO_HOST: self.copy_to_host,
            Kind.RELEASE_HOLD: self.release_hold,
        }

    def copy_to_host(self, action: Action) -> str:
        alias, params = _alias(action), _params(action, CopyParams)
        host = params.host
        cluster = self.manifest.cluster
        assert cluster is not None  # the planner plans copies only for a [cluster]
        entry = local_entry(self.state.models[alias], params.digest)
        progress = self.fetch_progress() if self.fetch_progress else None
        hold = (cluster.rank0, alias)
        result = copy_entry(host, cluster.hosts[host], entry, hold=hold, progress=progress)
        self.copied.setdefault(alias, set()).add(host)
        return result.describe()

    def release_hold(self, action: Action) -> str:
        params = _params(action, ReleaseParams)
        cluster = self.manifest.cluster
        assert cluster is not None  # the planner plans releases only for a [cluster]
        # A host removed from [cluster.hosts] is reached as the served generation recorded it.
        host = cluster.hosts.get(params.host) or self.snap.observed.removed_hosts[params.host]
        try:
            there = release_on_host(params.host, host, params.entry, params.rank0, params.alias)
        except UnavailableError as exc:
            if params.host in cluster.hosts:
                raise
            # No later apply looks at a removed host once this generation serves without it.
            raise UnavailableError(
                exc.message,
                hint=f"{params.host} is no longer in [cluster.hosts]: run `local-ai gc "
                f"--release-holds` on it (ssh {host.ssh})",
            ) from None
        what = f"{params.rank0}'s hold of store entry {params.entry} for {params.alias}"
        return f"released {what} on {params.host}" if there else f"{params.host} had no {what}"

    def write_client(self, action: Action) -> str:
        change = _params(action, ClientChange)
        return describe_result(change, apply_client_change(change))

    # ---- models ----------------------------------------------------------------------------

    def _spec(self, alias: str, action: Action | None = None) -> ModelSpec:
        """The manifest's spec; for `quantize = "auto"`, with the level the plan chose."""
        spec = self.manifest.models[alias]
        if spec.quantize == "auto":
            level = self.auto_levels.get(alias)
            if action is not None and isinstance(action.params, ConvertParams | InstallParams):
                level = action.params.quantize
                self.auto_levels[alias] = level
            spec = spec.model_copy(update={"quantize": level})
        return spec

    def _source(self, alias: str) -> ResolvedSource:
        return self.snap.sources[alias]

    def _save_lock_entry(self, alias: str) -> None:
        if self.frozen:
            return
        spec = self.manifest.models[alias]
        fetched = self.fetched.get(alias)
        self.lock_models[alias] = entry_from_resolved(
            self._source(alias),
            spec,
            sha256s=fetched.sha256s() if fetched else None,
            before=self.lock_models.get(alias),
            chosen=self.auto_levels.get(alias) if spec.quantize == "auto" else None,
        )
        self._write_lock()

    def _write_lock(self) -> None:
        # Entries of aliases the manifest dropped go when `apply --prune` removes them.
        models = dict(self.lock_models)
        save_lock(self.snap.lock_path, LockFile(models=models))

    def resolve(self, action: Action) -> str:
        alias = _alias(action)
        self._save_lock_entry(alias)
        source = self._source(alias)
        return f"locked {source.label}"

    def fetch(self, action: Action) -> str:
        alias = _alias(action)
        progress = self.fetch_progress() if self.fetch_progress else None
        result = fetch(self._source(alias), progress=progress, offline=self.offline)
        self.fetched[alias] = result
        return f"{_mb(result.downloaded_bytes)} downloaded, {_mb(result.reused_bytes)} already here"

    def verify(self, action: Action) -> str:
        alias = _alias(action)
        # Every file is present now; fetch checks each against its sha256 (by stat when the
        # same bytes were hashed before) and transfers nothing.
        result = fetch(self._source(alias), offline=True)
        self.fetched[alias] = result
        return f"{len(result.files)} files match local-ai.lock"

    def _fetched(self, alias: str) -> FetchResult:
        if alias not in self.fetched:
            self.fetched[alias] = fetch(self._source(alias), offline=True)
        return self.fetched[alias]

    def _convert_source(self, alias: str) -> tuple[ResolvedSource, Path]:
        """The source with the sha256s fetch verified, and where its weights are on disk."""
        fetched = self._fetched(alias)
        source = self._source(alias).with_sha256s(fetched.sha256s())
        return source, weights_at(source, fetched.path)

    def convert(self, action: Action) -> str:
        alias = _alias(action)
        spec = self._spec(alias, action)
        recipe = recipe_for(spec)
        source, at = self._convert_source(alias)
        base = (source.repo or at.stem).split("/")[-1]
        from contextlib import nullcontext

        progress = self.convert_progress() if self.convert_progress else nullcontext()
        with progress as on_event:
            result = convert_to_store(
                source,
                recipe,
                at=at,
                digest=_params(action, ConvertParams).digest,
                name=safe_name(f"{base}-{recipe.level}"),
                on_event=on_event,
            )
        self.converted[alias] = result
        return f"{'reused' if result.reused else 'built'} {result.path.name}"

    def install(self, action: Action) -> str:
        alias = _alias(action)
        spec = self._spec(alias, action)
        source = self._source(alias)
        converted = self.converted.get(alias)
        if converted is None and _params(action, InstallParams).from_store:
            converted = self._reuse_conversion(alias, spec)
        if converted is not None:
            record = installed_record(source, spec, converted=converted)
        else:
            fetched = self._fetched(alias)
            base = fetched.path.parent if fetched.path.is_file() else fetched.path
            for item in fetched.files:
                if item.name.endswith(".safetensors"):
                    check_safetensors(base / item.name)  # served as is: the engine maps these
            record = installed_record(source, spec, fetched=fetched)
        models = {**self.state.models, alias: record}
        self.state = save_state(
            settings.paths().state_file, self.state.model_copy(update={"models": models})
        )
        failpoint("install.state-saved")  # in state.json, the lock not yet updated
        self._save_lock_entry(alias)
        return f"{alias} → {record.location}"

    def _reuse_conversion(self, alias: str, spec: ModelSpec) -> ConversionResult:
        """The store already holds this conversion (the planner planned no convert)."""
        digest = convert_digest(self._source(alias), spec, CONVERTER_VERSION)
        # convert_to_store returns the existing entry without converting.
        store = Store(settings.paths())
        entry = next((e for e in store.entries() if e.digest == digest), None)
        if entry is None:
            raise LocalAIError(f"the store entry {digest} for {alias} disappeared during apply")
        source, at = self._convert_source(alias)
        return convert_to_store(source, recipe_for(spec), at=at, digest=digest, name=entry.name)

    def remove(self, action: Action) -> str:
        alias = _alias(action)
        models = {a: m for a, m in self.state.models.items() if a != alias}
        self.state = save_state(
            settings.paths().state_file, self.state.model_copy(update={"models": models})
        )
        if alias in self.lock_models and not self.frozen:
            del self.lock_models[alias]
            self._write_lock()
        return f"{alias} forgotten; `local-ai gc` frees its files"

    # ---- server ----------------------------------------------------------------------------

    def build_alias_map(self, admit: tuple[str, ...] = ()) -> AliasMap:
        commits = {a: s.commit for a, s in self.snap.sources.items()}
        current = Generations(settings.paths().generations).current()
        in_service = current.alias_map() if current is not None else None
        return alias_map_of(
            self.manifest,
            self.state,
            commits,
            admit=admit,
            in_service=in_service,
            groups=self.groups(in_service),
        )

    def groups(self, in_service: AliasMap | None = None) -> dict[str, GroupEntry]:
        """The sharded aliases whose store entry is on every host, with their groups. One the
        plan could not plan (a host down, or not observed: `--target` another model) keeps the
        group it is served by: a host that is down is that group's error, not a smaller map."""
        cluster, observed, out = self.manifest.cluster, self.snap.observed, {}
        for alias, spec in self.manifest.models.items():
            model = self.state.models.get(alias)
            source = observed.lock.get(alias) or observed.resolved.get(alias)
            if cluster is None or not spec.hosts or model is None:
                continue
            kept = in_service.models.get(alias) if in_service is not None else None
            if unusable(spec, observed.hosts):  # the planner's test for "not planned"
                if kept is not None and kept.group is not None and kept.path == model.location:
                    out[alias] = kept.group
                continue
            if source is None:
                continue
            digest = served_digest(source.source, spec, CONVERTER_VERSION)
            copied = self.copied.get(alias, set())
            group = group_of(alias, spec, cluster, model, digest, observed.hosts, copied)
            if group is not None:
                out[alias] = group
        return out

    def write_alias_map(self, action: Action) -> AliasMap:
        alias_map = self.build_alias_map(_params(action, ServeParams).admit)
        write_hostfiles(self.manifest, alias_map)
        put_in_service(alias_map)
        self.alias_map_written = alias_map
        return alias_map

    def start_server(self, action: Action) -> str:
        alias_map = self.build_alias_map(_params(action, ServeParams).admit)
        write_hostfiles(self.manifest, alias_map)
        result = daemon.start(self.snap.loaded, alias_map)
        self.alias_map_written = alias_map
        if result.already_running:
            # Started meanwhile by someone else (a killed apply, `server start`), perhaps from
            # an older alias map: make it take this one.
            self.write_alias_map(action)
            served = daemon.reload_aliases()
            return f"serving {', '.join(served) or 'no models yet'} at {result.url}"
        return f"serving {', '.join(result.aliases) or 'no models yet'} at {result.url}"

    def restart_server(self, action: Action) -> str:
        daemon.stop()
        return self.start_server(action)

    def restart_engine(self, action: Action) -> str:
        pid = daemon.restart_engine(engine_settings(self.manifest), timeout=ENGINE_READY_TIMEOUT)
        return f"engine restarted (pid {pid})"

    def reload_aliases(self, action: Action) -> str:
        self.write_alias_map(action)
        failpoint("aliases.written")  # the new map on disk, the server still on the old one
        served = daemon.reload_aliases()
        return f"serving {', '.join(served) or 'no models'}"

    def benchmark(self, action: Action) -> str:
        alias = _alias(action)
        info = _running()
        bench = self.manifest.benchmark
        api_key = _api_key(self.snap)
        # One short request first: loading the model is not part of its speed.
        stream_once(info.url, alias, prompt_tokens=16, gen_tokens=2, api_key=api_key, salt=-1)
        level = run_level(
            info.url,
            alias,
            concurrency=1,
            repeat=1,
            prompt_tokens=bench.prompt_tokens,
            gen_tokens=bench.gen_tokens,
            api_key=api_key,
        )
        record = {
            **context_of(alias),
            "at": time.time(),
            "source": "apply",
            "prompt_tokens": bench.prompt_tokens,
            "gen_tokens": bench.gen_tokens,
            "levels": [level.to_json()],
        }
        decode = level.decode_tps_per_stream.median
        params = _params(action, GateParams)
        floor = params.floor
        too_slow = floor is not None and decode < floor
        verdict = f"{decode:.1f} tok/s < {floor:g}" if too_slow else None
        self._judge(alias, verdict if params.gate else None, benchmark=record)
        if too_slow:
            raise BenchmarkFloorError(
                f"{alias} decodes at {decode:.1f} tok/s, below the {floor:g} tok/s asked for",
                hint="pick a lower quantize level or a smaller model, or lower "
                "min_tokens_per_second",
            )
        return f"{decode:.1f} tok/s decode, first token {level.ttft_s.median * 1000:.0f} ms"

    def conform(self, action: Action) -> str:
        from local_ai.clients.check import conformance

        alias, params = _alias(action), _params(action, GateParams)
        _running()
        checks = conformance(self.manifest, alias, params.clients)
        sent = sum(len(c.probes) for c in checks)
        # Per client, the first request that failed (the later ones depend on it).
        failed = [
            f"{c.title}: {p.name}: {p.detail}"
            for c in checks
            for p in [next((p for p in c.probes if not p.ok), None)]
            if p is not None
        ]
        verdict = "; ".join(failed) or None
        self._judge(alias, verdict if params.gate else None)
        if verdict is None:
            return f"{sent} requests of {', '.join(c.title for c in checks)} answered"
        if params.gate:
            raise ConformanceError(
                f"{alias} fails {verdict}",
                hint="pick a model whose chat template and tool-call format the engine parses, "
                "or turn benchmark.gate off to serve it anyway (docs/integrations.md)",
            )
        return f"warning: {alias} fails {verdict}"

    def _judge(
        self, alias: str, rejected: str | None, *, benchmark: dict[str, Any] | None = None
    ) -> None:
        """Record the gate's verdict on the installed build (None: it may serve)."""
        models = dict(self.state.models)
        if alias in models:
            models[alias] = models[alias].model_copy(update={"rejected": rejected})
        update: dict[str, Any] = {"models": models}
        if benchmark is not None:
            update["benchmarks"] = [*self.state.benchmarks[-199:], benchmark]
        self.state = save_state(settings.paths().state_file, self.state.model_copy(update=update))


class GateError(LocalAIError):
    """A new build failed a measurement apply makes before serving it (benchmark.gate)."""


class ConformanceError(GateError):
    """A configured client's requests fail against a new build."""


class BenchmarkFloorError(GateError):
    """A model is slower than the manifest's min_tokens_per_second."""


def installed_record(
    source: ResolvedSource,
    spec: ModelSpec,
    *,
    fetched: FetchResult | None = None,
    converted: ConversionResult | None = None,
) -> InstalledModel:
    """The state.json record of an alias apply installed: a conversion in the store, or the
    source served as fetched (the HF cache snapshot, no copy, or the user's own directory)."""
    label = source.label
    if source.kind == "repo":
        label = f"{source.repo}" + (f":{source.file}" if source.file else "")
        label += f"@{source.revision}" if source.revision else ""
    record = InstalledModel(
        alias=source.alias,
        source=label,
        format=source.format,
        location="",
        location_kind="hf-cache" if source.kind == "repo" else "local",
        commit=source.commit,
        quantization=source.quantization.label if source.quantization else None,
        spec_fingerprint=install_key(spec),
        spec=install_fields(spec),
    )
    files: dict[str, FileRecord] = {}
    if converted is not None:
        for path in sorted(converted.path.rglob("*")):
            if path.is_file() and path.name != PROVENANCE_FILE:
                stat = path.stat()
                name = str(path.relative_to(converted.path))
                files[name] = FileRecord(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        built: dict[str, Any] = {
            "format": "mlx",
            "location": str(converted.path),
            "location_kind": "store",
            "quantization": converted.recipe.level,
            "recipe": converted.recipe.to_json(),
            "store_digest": converted.digest,
        }
    else:
        assert fetched is not None
        base = fetched.path.parent if fetched.path.is_file() else fetched.path
        for item in fetched.files:
            try:
                mtime: int | None = (base / item.name).stat().st_mtime_ns
            except OSError:
                mtime = None
            files[item.name] = FileRecord(size=item.size, sha256=item.sha256, mtime_ns=mtime)
        built = {"location": str(fetched.path)}
    size = sum(f.size for f in files.values())
    return record.model_copy(update={**built, "files": files, "size_bytes": size})


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _api_key(snapshot: Snapshot) -> str | None:
    return resolve_api_key(snapshot.loaded.manifest, snapshot.loaded.path)


def _running() -> Any:
    info, alive = running_server()
    if info is None or not alive:
        raise ServerError("the server is not running", hint="run `local-ai server start`")
    return info
