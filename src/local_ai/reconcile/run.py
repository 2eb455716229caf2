"""Plan and apply as the CLI and watch mode run them: observe → plan → execute → record."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from local_ai import settings
from local_ai.clients.base import ClientChange
from local_ai.cluster.launch import write_hostfile
from local_ai.convert.api import CONVERTER_VERSION
from local_ai.errors import ConfigError, LocalAIError, NotFoundError
from local_ai.manifest.load import LoadedManifest
from local_ai.manifest.models import Manifest
from local_ai.manifest.serving import running_settings
from local_ai.reconcile.adapters import Adapters, GateError
from local_ai.reconcile.executor import Outcome, Report, execute
from local_ai.reconcile.generations import Generation, Generations
from local_ai.reconcile.model import Action, GateParams, Kind, Plan
from local_ai.reconcile.observe import Snapshot, observe
from local_ai.reconcile.planner import Options, plan
from local_ai.reconcile.render import to_json
from local_ai.server.aliases import put_in_service
from local_ai.server.daemon import reload_aliases, running_server
from local_ai.store.layout import Store
from local_ai.util.atomic import atomic_write_text, clean_stale_temps
from local_ai.util.failpoints import failpoint

PLAN_FILE_VERSION = 1


@dataclass(frozen=True)
class RunOptions:
    prune: bool = False
    frozen: bool = False
    targets: tuple[str, ...] = ()
    offline: bool = False
    benchmark: bool = True

    def planner(self) -> Options:
        return Options(
            prune=self.prune,
            frozen=self.frozen,
            targets=self.targets,
            converter_version=CONVERTER_VERSION,
            benchmark=self.benchmark,
        )


def make_plan(loaded: LoadedManifest, options: RunOptions) -> tuple[Snapshot, Plan]:
    snapshot = observe(
        loaded, offline=options.offline, frozen=options.frozen, targets=options.targets
    )
    return snapshot, plan(loaded.manifest, snapshot.observed, options.planner())


# ---- saved plans ----------------------------------------------------------------------------


def save_plan(path: Path, loaded: LoadedManifest, options: RunOptions, the_plan: Plan) -> None:
    doc = {
        "local_ai_plan": PLAN_FILE_VERSION,
        "manifest": str(loaded.path),
        "options": {
            "prune": options.prune,
            "frozen": options.frozen,
            "targets": list(options.targets),
            "offline": options.offline,
            "benchmark": options.benchmark,
        },
        "plan": to_json(the_plan),
        # The exact client edits shown; they hold the settings files' text, hence 0600.
        "client_changes": {
            a.resource: a.params.to_saved()
            for a in the_plan.actions
            if isinstance(a.params, ClientChange)
        },
    }
    atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n", mode=0o600)


@dataclass(frozen=True)
class SavedPlan:
    manifest: Path
    options: RunOptions
    manifest_hash: str
    observed_fingerprint: str
    client_changes: dict[str, ClientChange]  # resource -> the edits the plan showed


def load_plan(path: Path) -> SavedPlan:
    try:
        doc = json.loads(path.read_text("utf-8"))
        opts = doc["options"]
        return SavedPlan(
            manifest=Path(doc["manifest"]),
            options=RunOptions(
                prune=bool(opts["prune"]),
                frozen=bool(opts["frozen"]),
                targets=tuple(opts["targets"]),
                offline=bool(opts["offline"]),
                benchmark=bool(opts["benchmark"]),
            ),
            manifest_hash=str(doc["plan"]["manifest_hash"]),
            observed_fingerprint=str(doc["plan"]["observed_fingerprint"]),
            client_changes={
                str(resource): ClientChange.from_saved(change)
                for resource, change in doc["client_changes"].items()
            },
        )
    except FileNotFoundError:
        raise ConfigError("no such plan file", path=path) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"is not a plan written by `local-ai plan --out` ({exc})",
            path=path,
            hint="run `local-ai plan --out plan.json` again",
        ) from None


def stale_reason(saved: SavedPlan, fresh: Plan) -> str | None:
    if saved.manifest_hash != fresh.manifest_hash:
        return f"{saved.manifest} changed since the plan was made"
    if saved.observed_fingerprint != fresh.observed_fingerprint:
        return (
            "the store, the lock file, the server or a client's settings changed since the plan "
            "was made"
        )
    writes = {a.resource for a in fresh.actions if isinstance(a.params, ClientChange)}
    if writes != set(saved.client_changes):
        return "the client edits to make differ from the saved plan's"
    return None


def with_saved_edits(saved: SavedPlan, fresh: Plan) -> Plan:
    """`fresh` (not stale) carrying the client edits exactly as the saved plan showed them;
    writing refuses a file whose text is no longer what those edits start from."""
    actions = tuple(
        replace(a, params=saved.client_changes[a.resource])
        if isinstance(a.params, ClientChange)
        else a
        for a in fresh.actions
    )
    return replace(fresh, actions=actions)


# ---- apply ----------------------------------------------------------------------------------


def sharded_targets(manifest: Manifest, targets: tuple[str, ...] = ()) -> list[str]:
    """The models of this apply placed on [cluster] hosts."""
    return [
        alias
        for alias, spec in manifest.models.items()
        if spec.hosts and (not targets or alias in targets)
    ]


def stage_cluster(manifest: Manifest, targets: tuple[str, ...], report: Report | None) -> None:
    """After the plan ran: the mlx.launch hostfile of each sharded model whose copies all
    completed (also written when its group is put in service; here for a stopped server)."""
    aliases = sharded_targets(manifest, targets)
    if not aliases or manifest.cluster is None:
        return
    unfinished = {
        o.action.resource
        for o in (report.outcomes if report else [])
        if o.action.kind is Kind.COPY_TO_HOST and o.status != "done"
    }
    for alias in aliases:
        if f"model.{alias}" not in unfinished:
            write_hostfile(manifest.cluster, alias, manifest.models[alias].hosts or [])


@dataclass
class ApplyResult:
    report: Report
    generation: Generation | None
    gated_back_to: int | None = None  # benchmark.gate switched the server back to this one
    gated_by: tuple[Outcome, ...] = ()  # the gated measurements that failed


def apply_plan(
    snapshot: Snapshot,
    the_plan: Plan,
    options: RunOptions,
    *,
    on_start: Callable[[Action], None] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
    adapters: Adapters | None = None,
) -> ApplyResult:
    """Execute `the_plan` (made from `snapshot`) and record a generation when it all worked.
    The caller holds the apply lock."""
    if the_plan.errors:
        raise LocalAIError("the plan has errors; nothing was changed")
    _clean_killed_run(snapshot)
    adapters = adapters or Adapters(snapshot, offline=options.offline, frozen=options.frozen)
    report = execute(the_plan, adapters.handlers(), on_start=on_start, on_done=on_done)
    generation = None
    gated = None
    manifest = snapshot.loaded.manifest
    closed = _gate_closed(report)
    if closed:
        gated = _serve_current_generation(adapters)
    if report.ok and not report.interrupted and the_plan.has_changes:
        failpoint("generation.before-record")  # every action done, no generation yet
        generation = record_generation(snapshot, adapters)
    if not report.interrupted:
        stage_cluster(manifest, options.targets, report)
    return ApplyResult(report, generation, gated, closed)


def _clean_killed_run(snapshot: Snapshot) -> None:
    """What a killed apply leaves: staging dirs and temp files of writes never renamed."""
    paths = settings.paths()
    Store(paths).clean_leftovers()
    for directory in (
        paths.root,
        paths.run,
        paths.run / "cluster",
        paths.generations,
        paths.root / "clients",
    ):
        clean_stale_temps(directory)
    clean_stale_temps(paths.verified_hashes.parent)
    clean_stale_temps(snapshot.lock_path.parent, snapshot.lock_path.name)


def settle(snapshot: Snapshot) -> Generation | None:
    """An apply with nothing to do: clean what a killed run left, and finish the generation
    record an apply killed after its last action did not write (or did not make current).
    Returns a generation recorded now. The caller holds the apply lock."""
    _clean_killed_run(snapshot)
    adapters = Adapters(snapshot)
    wanted = adapters.build_alias_map()
    if not wanted.models or wanted.hash is None:
        return None
    manifest = snapshot.loaded.manifest
    server = json.loads(json.dumps(running_settings(manifest)))
    generations = Generations(settings.paths().generations)
    numbers = generations.numbers()
    latest = generations.load(numbers[-1]) if numbers else None
    if latest is None or latest.aliases_hash != wanted.hash or latest.server != server:
        return record_generation(snapshot, adapters)
    if generations.current_number() != latest.number and generations.rolled_back_to() is None:
        generations.set_current(latest.number)  # written, but killed before the switch
    return None


def _gate_closed(report: Report) -> tuple[Outcome, ...]:
    """The measurements the plan gated (benchmark, client conformance) that failed."""
    return tuple(
        o
        for o in report.outcomes
        if isinstance(o.error, GateError)
        and isinstance(o.action.params, GateParams)
        and o.action.params.gate
    )


def _serve_current_generation(adapters: Adapters) -> int | None:
    """benchmark.gate: a model too slow or failing a client's requests does not go into
    service; the server goes back to the generation it served before this apply (before the
    first one: to what is installed, rejected builds left out)."""
    current = Generations(settings.paths().generations).current_number()
    if current is not None:
        rollback(current)
        return current
    put_in_service(adapters.build_alias_map())
    info, alive = running_server()
    if info is not None and alive:
        reload_aliases()
    return None


def record_generation(snapshot: Snapshot, adapters: Adapters) -> Generation:
    manifest = snapshot.loaded.manifest
    alias_map = adapters.alias_map_written or adapters.build_alias_map()
    lock: dict[str, Any] = {
        alias: entry.model_dump(mode="json") for alias, entry in adapters.lock_models.items()
    }
    return Generations(settings.paths().generations).record(
        manifest_hash=manifest.fingerprint(),
        aliases=dict(alias_map.models),
        default=alias_map.default,
        preload=tuple(alias_map.preload),
        aliases_hash=alias_map.hash or "",
        lock=lock,
        server=running_settings(manifest),
    )


def rollback(number: int | None) -> Generation:
    """Serve generation `number` (default: the one before the current) again."""
    generations = Generations(settings.paths().generations)
    numbers = generations.numbers()
    current = generations.current_number()
    if number is None:
        older = [n for n in numbers if current is None or n < current]
        if not older:
            raise NotFoundError(
                "there is no earlier generation to roll back to",
                hint="`local-ai generations` lists what is kept",
            )
        number = older[-1]
    target = generations.load(number)
    missing = [a for a, t in target.aliases.items() if not Path(t.path).exists()]
    if missing:
        raise NotFoundError(
            f"generation {number} serves {', '.join(missing)} from files that are gone",
            hint="`local-ai gc` keeps what generations reference; pick another generation",
        )
    put_in_service(target.alias_map())
    generations.set_current(number, rollback=True)
    info, alive = running_server()
    if info is not None and alive:
        reload_aliases()
    return target
